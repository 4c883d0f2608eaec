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

// checkVersion refuses a JSON value of annotation whose version is not
// Version; a value without one is version 1.
func checkVersion(annotation string, raw []byte) error {
	var v struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("annotation %s: reading its protocol version: %w", annotation, err)
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

// decode checks the version of a JSON annotation value, then decodes it
// into out; what names the value in the error ("a JSON request").
func decode(annotation, what, value string, out any) error {
	if err := json.Unmarshal([]byte(value), out); err != nil {
		return fmt.Errorf("annotation %s is not %s: %w", annotation, what, err)
	}
	return checkVersion(annotation, []byte(value))
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
		Required bool `json:"required"`
	}
	if err := decode(AnnotationRebootRequired, `"true" or a JSON object`, value, &v); err != nil {
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
