package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Version is the version of the wire format of every annotation tokenroll
// writes on a Node. Each value carries it (a "version" member), so the agent
// and the coordinator, upgraded one after the other, tell a value they
// understand from one a newer release wrote. A value without it was written
// by a release before versions and reads as version 1.
const Version = 1

// VersionError is a value written in a protocol version this tokenroll does
// not understand.
type VersionError struct {
	Annotation string
	Found      int
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("annotation %s has protocol version %d, and this tokenroll understands version %d only: "+
		"it was written by another release of tokenroll; upgrade the agent and the coordinator to the same release", e.Annotation, e.Found, Version)
}

// versioned is what precedes every value on the wire.
type versioned struct {
	Version int `json:"version"`
}

// versionRead is what a value's parse reads of its version, beside its
// fields, in the same pass: nil when the value has none.
type versionRead struct {
	Version *int `json:"version"`
}

// decode decodes a JSON annotation value into out, a struct that embeds v
// beside the value's own fields, and refuses a value whose version is not
// Version; a value without one is version 1. What names the value in the
// error ("a JSON request"). One pass: the coordinator parses every Node's
// annotations.
func decode(annotation, what, value string, out any, v *versionRead) error {
	if err := json.Unmarshal([]byte(value), out); err != nil {
		return fmt.Errorf("annotation %s is not %s: %w", annotation, what, err)
	}
	found := 1
	if v.Version != nil {
		found = *v.Version
	}
	if found != Version {
		return &VersionError{Annotation: annotation, Found: found}
	}
	return nil
}

// Marshal the annotation values with their version first; the types'
// fields are on the wire as they always were.

// MarshalJSON writes the report with its protocol version.
func (r TokenReport) MarshalJSON() ([]byte, error) {
	type plain TokenReport
	return json.Marshal(struct {
		versioned
		plain
	}{versioned{Version}, plain(r)})
}

// MarshalJSON writes the request with its protocol version.
func (r Request) MarshalJSON() ([]byte, error) {
	type plain Request
	return json.Marshal(struct {
		versioned
		plain
	}{versioned{Version}, plain(r)})
}

// MarshalJSON writes the status with its protocol version.
func (s Status) MarshalJSON() ([]byte, error) {
	type plain Status
	return json.Marshal(struct {
		versioned
		plain
	}{versioned{Version}, plain(s)})
}

// MarshalJSON writes the node state with its protocol version.
func (s NodeState) MarshalJSON() ([]byte, error) {
	type plain NodeState
	return json.Marshal(struct {
		versioned
		plain
	}{versioned{Version}, plain(s)})
}

// RebootRequiredValue is the reboot-required annotation's value while a
// reboot is required (the annotation is absent otherwise).
func RebootRequiredValue() string {
	raw, err := json.Marshal(struct {
		versioned
		Required bool `json:"required"`
	}{versioned{Version}, true})
	if err != nil {
		panic(err) // a fixed struct of a bool and an int always encodes
	}
	return string(raw)
}

// ParseRebootRequired reads the reboot-required annotation: "" (absent) is
// false, "true" is what releases before versions wrote.
func ParseRebootRequired(value string) (bool, error) {
	switch value {
	case "":
		return false, nil
	case "true":
		return true, nil
	}
	var v struct {
		versionRead
		Required bool `json:"required"`
	}
	if err := decode(AnnotationRebootRequired, `"true" or a JSON object`, value, &v, &v.versionRead); err != nil {
		return false, err
	}
	return v.Required, nil
}

// IsVersionError reports whether err is a value of an unknown protocol
// version.
func IsVersionError(err error) bool {
	var v *VersionError
	return errors.As(err, &v)
}
