package protocol

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Annotations on a Node. The coordinator writes the request; only the
// node's agent writes the status and reboot-required.
const (
	// AnnotationRequest asks the node's agent to act: a Request as JSON.
	AnnotationRequest = Prefix + "request"
	// AnnotationStatus is the agent's answer: a Status as JSON.
	AnnotationStatus = Prefix + "request-status"
	// AnnotationRebootRequired is RebootRequiredValue while the node's
	// reboot sentinel (/var/run/reboot-required) exists, and absent
	// otherwise.
	AnnotationRebootRequired = Prefix + "reboot-required"
)

// Action is what the agent is asked to do.
type Action string

// The actions an agent performs. A remediation strategy (Strategy) decides
// which, if any, it asks for: restarting pods is the coordinator's own work
// (evictions), not the agent's.
const (
	ActionReboot         Action = "reboot"
	ActionKubeletRestart Action = "kubelet-restart"
)

// Actions lists the actions an agent performs.
func Actions() []Action { return []Action{ActionReboot, ActionKubeletRestart} }

// Valid reports whether a names an action an agent performs.
func (a Action) Valid() bool { return slices.Contains(Actions(), a) }

// RequestPhase is where a request stands.
type RequestPhase string

// Request phases, in order; done, failed and refused are final.
const (
	PhaseAccepted RequestPhase = "accepted"
	PhaseRunning  RequestPhase = "running"
	PhaseDone     RequestPhase = "done"
	PhaseFailed   RequestPhase = "failed"
	PhaseRefused  RequestPhase = "refused"
)

// Final reports whether nothing more will happen to a request in phase p.
func (p RequestPhase) Final() bool { return p == PhaseDone || p == PhaseFailed || p == PhaseRefused }

// Request is the coordinator's ask, one at a time per node.
type Request struct {
	// ID is unique per request; the agent acts at most once per ID.
	ID     string `json:"id"`
	Action Action `json:"action"`
	// Node must name the Node the request is on.
	Node string `json:"node"`
	// Rollout names the rollout the request belongs to.
	Rollout   string    `json:"rollout,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// Status is the agent's report on a request.
type Status struct {
	ID     string       `json:"id"`
	Action Action       `json:"action,omitempty"`
	Phase  RequestPhase `json:"phase"`
	// Message says what happened, for people.
	Message string `json:"message,omitempty"`
	// BootID is the boot ID the agent saw when it wrote this status; after a
	// reboot it differs from the one before.
	BootID string `json:"bootID,omitempty"`
	// DryRun, on a done status: the agent runs with --dry-run and did not
	// act; Message says what it would have done. A coordinator that does
	// not know the field reads a done status, as before.
	DryRun    bool      `json:"dryRun,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// ParseRequest decodes and checks a request annotation.
func ParseRequest(value string) (Request, error) {
	type plain Request
	var read struct {
		versionRead
		plain
	}
	err := decode(AnnotationRequest, "a JSON request", value, &read, &read.versionRead)
	r := Request(read.plain)
	if err != nil {
		if IsVersionError(err) {
			// With its ID, the agent's refusal reaches the coordinator.
			return r, err
		}
		return Request{}, err
	}
	var errs []error
	if r.ID == "" {
		errs = append(errs, errors.New("no id"))
	}
	if !r.Action.Valid() {
		errs = append(errs, fmt.Errorf("action %q is not %s or %s", r.Action, ActionReboot, ActionKubeletRestart))
	}
	if r.Node == "" {
		errs = append(errs, errors.New("no node"))
	}
	if r.CreatedAt.IsZero() {
		errs = append(errs, errors.New("no createdAt"))
	}
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("annotation %s: %w", AnnotationRequest, err)
	}
	return r, nil
}

// ParseStatus decodes a status annotation.
func ParseStatus(value string) (Status, error) {
	type plain Status
	var s struct {
		versionRead
		plain
	}
	if err := decode(AnnotationStatus, "a JSON status", value, &s, &s.versionRead); err != nil {
		return Status{}, err
	}
	return Status(s.plain), nil
}
