package deploy_test

import (
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/tokenroll/tokenroll/coordinator"
)

// TestAuditSources: with the audit sources on, the webhook's Service
// selects the coordinator's Pods that carry the label the leader sets, on
// the port the webhook listens on; the Pod knows its name (--pod-name) and
// may label itself (patch on pods, in its namespace only); the certificate
// flags name files the Secrets put there; the log flags name files in the
// mounted host directory, read-only, on control-plane nodes. Without them,
// none of it.
func TestAuditSources(t *testing.T) {
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			objs := render(t, r)
			_, dep := workloads(t, r)
			spec := dep.Spec.Template.Spec
			c := spec.Containers[0]
			on := strings.HasSuffix(r.name, "-audit")
			svcName := dep.Name + "-audit"
			role := toTyped[rbacv1.Role](t, find(t, objs, "Role", dep.Name))
			patchesPods := slices.ContainsFunc(role.Rules, func(rule rbacv1.PolicyRule) bool {
				return slices.Contains(rule.Resources, "pods") && slices.Contains(rule.Verbs, "patch")
			})
			hasService := false
			for _, o := range objs {
				if o.GetKind() == "Service" && o.GetName() == svcName {
					hasService = true
				}
			}
			if !on {
				if hasService || patchesPods || flagValue(c.Args, "--audit-webhook-listen") != "" || flagValue(c.Args, "--audit-log") != "" {
					t.Errorf("without the audit sources: Service %v, patch pods %v, args %q", hasService, patchesPods, c.Args)
				}
				return
			}
			if !patchesPods {
				t.Error("the Role does not let the leader label its Pod")
			}
			for _, rule := range role.Rules {
				if slices.Contains(rule.Resources, "pods") && (len(rule.Verbs) != 1 || len(rule.ResourceNames) != 0) {
					t.Errorf("the Role's rule on pods %+v; want patch alone", rule)
				}
			}
			// The webhook's Service and its port.
			svc := toTyped[corev1.Service](t, find(t, objs, "Service", svcName))
			want := map[string]string{coordinator.LabelAuditReceiver: "true"}
			for k, v := range dep.Spec.Selector.MatchLabels {
				want[k] = v
			}
			if !reflect.DeepEqual(svc.Spec.Selector, want) {
				t.Errorf("the webhook's Service selects %v, want the coordinator's Pods and the leader's label: %v", svc.Spec.Selector, want)
			}
			listen := flagValue(c.Args, "--audit-webhook-listen")
			port, _ := strconv.Atoi(strings.TrimPrefix(listen, ":"))
			if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.StrVal == "" ||
				!slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
					return p.Name == svc.Spec.Ports[0].TargetPort.StrVal && int(p.ContainerPort) == port
				}) {
				t.Errorf("the Service's ports %+v do not reach --audit-webhook-listen=%s (container ports %+v)", svc.Spec.Ports, listen, c.Ports)
			}
			if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
			}) {
				t.Error("no POD_NAME from metadata.name: the leader cannot label its Pod")
			}
			// Every file a flag names is in a volume mounted there.
			mounted := func(path string) *corev1.Volume {
				for _, m := range c.VolumeMounts {
					if strings.HasPrefix(path, m.MountPath+"/") && m.ReadOnly {
						for i := range spec.Volumes {
							if spec.Volumes[i].Name == m.Name {
								return &spec.Volumes[i]
							}
						}
					}
				}
				return nil
			}
			for _, flag := range []string{"audit-webhook-cert", "audit-webhook-key", "audit-webhook-client-ca"} {
				if v := mounted(flagValue(c.Args, "--"+flag)); v == nil || v.Secret == nil {
					t.Errorf("--%s=%s is in no Secret mounted read-only", flag, flagValue(c.Args, "--"+flag))
				}
			}
			for _, log := range strings.Split(flagValue(c.Args, "--audit-log"), ",") {
				v := mounted(log)
				if v == nil || v.HostPath == nil || v.HostPath.Path != filepath.Dir(log) {
					t.Errorf("--audit-log=%s is not in the host's directory mounted read-only", log)
				}
			}
			if dir := flagValue(c.Args, "--audit-log-checkpoint-dir"); !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.MountPath == dir && !m.ReadOnly
			}) {
				t.Errorf("--audit-log-checkpoint-dir=%s is not a writable mount (the root filesystem is read-only)", dir)
			}
			if _, ok := spec.NodeSelector["node-role.kubernetes.io/control-plane"]; !ok ||
				!slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool { return tol.Key == "node-role.kubernetes.io/control-plane" }) {
				t.Errorf("the log source's replicas do not run on control-plane nodes: nodeSelector %v, tolerations %v", spec.NodeSelector, spec.Tolerations)
			}
		})
	}
}
