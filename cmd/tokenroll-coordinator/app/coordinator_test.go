package app

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/cli/clitest"
)

func TestValidateReportsEveryBadFlag(t *testing.T) {
	clitest.ExpectUsage(t, NewCommand,
		clitest.Usage{Args: []string{"--lease-duration=5s", "--renew-deadline=10s", "--gate=maybe", "--strategy=pray", "--max-unavailable=0", "--namespace="},
			Want: []string{"--lease-duration=5s", "--gate=\"maybe\"", "--strategy=\"pray\"", "--max-unavailable=\"0\"", "--namespace is required"}},
		clitest.Usage{Args: []string{"--max-unavailable=150%"}, Want: []string{"at most 100%"}},
		clitest.Usage{Args: []string{"--max-unavailable=3", "--deadline-max-unavailable=2"},
			Want: []string{`--deadline-max-unavailable="2" is below --max-unavailable="3"`}},
		clitest.Usage{Args: []string{"--max-unavailable=20%", "--deadline-max-unavailable=10%"},
			Want: []string{`--deadline-max-unavailable="10%" is below --max-unavailable="20%"`}},
		clitest.Usage{Args: []string{"--deadline-max-unavailable=0"}, Want: []string{`--deadline-max-unavailable="0": must be at least 1`}},
		clitest.Usage{Args: []string{"--max-kubelet-restarts=0"}, Want: []string{`--max-kubelet-restarts="0": must be at least 1`}},
		clitest.Usage{Args: []string{"--max-kubelet-restarts=all"}, Want: []string{`--max-kubelet-restarts="all": want a number of nodes (1) or a percentage (10%)`}},
		clitest.Usage{Args: []string{"--drain-timeout=0", "--kube-api-qps=0", "--log-format=fancy"},
			Want: []string{"--drain-timeout=0s", "--kube-api-qps=0", "--log-format=\"fancy\""}},
		clitest.Usage{Args: []string{"--kured-lock=kured"}, Want: []string{`--kured-lock="kured": want NAMESPACE/NAME`}},
		clitest.Usage{Args: []string{"--kured-lock=Kube_System/kured"}, Want: []string{`--kured-lock="Kube_System/kured": namespace:`}},
		clitest.Usage{Args: []string{"--app-stale-grace=1m", "--app-window=30s"},
			Want: []string{"--app-stale-grace=1m0s must be longer than client-go's 1-minute reload", "--app-window=30s must be longer than --app-stale-grace=1m0s"}},
		clitest.Usage{Args: []string{"--app-stale-grace=2m", "--app-failing-grace=3m"},
			Want: []string{"--app-failing-grace=3m0s must be positive and at most --app-stale-grace=2m0s"}},
		clitest.Usage{Args: []string{"--app-failing-grace=0s"}, Want: []string{"--app-failing-grace=0s must be positive"}},
		clitest.Usage{Args: []string{"--audit-webhook-listen=:9443", "--audit-log=audit.log"},
			Want: []string{"--audit-webhook-cert is required with --audit-webhook-listen", `--audit-log="audit.log": must be an absolute path`}},
		clitest.Usage{Args: []string{"--app-detection=false", "--audit-log=/var/log/kube-apiserver/audit.log"},
			Want: []string{"--audit-webhook-listen and --audit-log feed app detection"}},
		clitest.Usage{Args: []string{"--pod-name=Not_A_Pod"}, Want: []string{`--pod-name="Not_A_Pod"`}},
		clitest.Usage{Args: []string{"coordinator"}, Want: []string{"takes no arguments", "Run 'tokenroll-coordinator --help'"}})
}

func TestWithoutAClusterSaysSo(t *testing.T) {
	t.Setenv("KUBECONFIG", t.TempDir()+"/none")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	code, _, stderr := clitest.Run(t, NewCommand)
	if code != cli.ExitFailure || !strings.Contains(stderr, "kubeconfig") || !strings.HasPrefix(stderr, "tokenroll-coordinator: ") {
		t.Errorf("exit %d, stderr %q; want exit 1 naming the kubeconfig", code, stderr)
	}
}

func TestDeadlineMaxUnavailableAccepted(t *testing.T) {
	for _, c := range [][2]string{{"1", ""}, {"1", "1"}, {"1", "5"}, {"10%", "25%"}, {"3", "10%"}, {"50%", "2"}} {
		o := newCoordinatorOptions()
		o.MaxUnavailable, o.DeadlineMaxUnavailable = c[0], c[1]
		if err := checkDeadlineMaxUnavailable(o.MaxUnavailable, o.DeadlineMaxUnavailable); err != nil {
			t.Errorf("--max-unavailable=%s --deadline-max-unavailable=%s refused: %v", c[0], c[1], err)
		}
	}
}

// The boolean flags' defaults: RolloutPolicies are read unless a person
// turns them off; --profiling is off unless asked for, its profiles showing
// stack traces and the command line.
func TestBooleanFlagDefaults(t *testing.T) {
	rolloutPolicies := func(o *coordinatorOptions) bool { return o.RolloutPolicies }
	profiling := func(o *coordinatorOptions) bool { return o.Profiling }
	for _, c := range []struct {
		flag string
		args []string
		get  func(*coordinatorOptions) bool
		want bool
	}{
		{"--rollout-policies", nil, rolloutPolicies, true},
		{"--rollout-policies", []string{"--rollout-policies=false"}, rolloutPolicies, false},
		{"--profiling", nil, profiling, false},
		{"--profiling", []string{"--profiling"}, profiling, true},
		{"--profiling", []string{"--profiling=false"}, profiling, false},
	} {
		o := newCoordinatorOptions()
		fs := pflag.NewFlagSet("tokenroll-coordinator", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if got := c.get(o); got != c.want {
			t.Errorf("%s with %q: %v, want %v", c.flag, c.args, got, c.want)
		}
	}
}
