package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// calibrationNode is the one node whose agent runs as its own process
// (tokenroll-agent --run=scan, the scanner container), so that what the
// in-process agents cost can be compared with a real one.
const calibrationNode = "calibration-0001"

// agentProc is the calibration node's simulated kubelet and real agent.
type agentProc struct {
	cmd  *exec.Cmd
	done chan error
	stop func()
}

// startCalibration runs the calibration node and its agent process
// against server. The node's pods come from pods, the fleet's shared
// informer: an informer of its own would wait for the API server's
// lagging watch cache like a thousand.
func startCalibration(ctx context.Context, cp *controlplane.ControlPlane, server, bin, dir string, pods *kubeletsim.SharedPods, log *zap.Logger) (*agentProc, error) {
	rc, err := cp.NodeConfig(calibrationNode)
	if err != nil {
		return nil, err
	}
	rc.Host = server
	root := filepath.Join(dir, calibrationNode)
	sim, err := kubeletsim.New(kubeletsim.Config{Name: calibrationNode, Root: root, RESTConfig: rc, StatusInterval: statusInterval, Pods: pods,
		Logger: log.Named("kubelet").With(zap.String("node", calibrationNode))})
	if err != nil {
		return nil, err
	}
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan struct{})
	go func() {
		defer close(simDone)
		_ = sim.Run(simCtx)
	}()
	select {
	case <-sim.Registered():
	case <-ctx.Done():
		stopSim()
		<-simDone
		return nil, ctx.Err()
	case <-time.After(10 * time.Minute): // a loaded machine, every kubelet starting at once
		stopSim()
		<-simDone
		return nil, fmt.Errorf("the calibration node %s did not register", calibrationNode)
	}
	kubeconfig := filepath.Join(dir, "agent.kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, rc); err != nil {
		stopSim()
		<-simDone
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		stopSim()
		<-simDone
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		stopSim()
		<-simDone
		return nil, err
	}
	cmd := exec.Command(bin, "--run=scan", "--node-name="+calibrationNode, "--kubelet-root="+root, "--kubeconfig="+kubeconfig,
		"--coordinator-namespace="+namespace, "--metrics-bind-address="+net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		stopSim()
		<-simDone
		return nil, fmt.Errorf("starting the agent %s: %w", bin, err)
	}
	a := &agentProc{cmd: cmd, done: make(chan error, 1)}
	go func() {
		a.done <- cmd.Wait()
		logFile.Close()
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.done:
			a.done <- err
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			a.done <- <-a.done
		}
		stopSim()
		<-simDone
	}
	var once sync.Once
	a.stop = func() { once.Do(stop) }
	return a, nil
}

func (a *agentProc) read() (benchkit.ProcUsage, error) { return benchkit.ReadProc(a.cmd.Process.Pid) }
