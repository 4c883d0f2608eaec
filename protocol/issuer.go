package protocol

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// IssuerConfigMapName is the ConfigMap, in the coordinator's namespace, in
// which the leader publishes the signing issuer it observed with the gate
// open. Agents watch it instead of reading OIDC discovery on a timer: one
// write on an issuer change reaches every node through its watch.
const IssuerConfigMapName = "tokenroll-issuer"

// Keys of the published issuer's ConfigMap data.
const (
	// IssuerKey holds the issuer, as OIDC discovery serves it.
	IssuerKey = "issuer"
	// IssuerObservedAtKey holds when the leader first saw the API servers
	// sign with it (RFC 3339): not a heartbeat, the object is written only
	// when the issuer changes.
	IssuerObservedAtKey = "observedAt"
)

// MaxIssuerLen bounds a published issuer: far longer than any URL an API
// server is configured with, short enough for a log line.
const MaxIssuerLen = 1024

// PublishedIssuer is what the coordinator publishes.
type PublishedIssuer struct {
	Issuer     string
	ObservedAt time.Time
}

// Data is the ConfigMap data that publishes p.
func (p PublishedIssuer) Data() map[string]string {
	return map[string]string{IssuerKey: p.Issuer, IssuerObservedAtKey: p.ObservedAt.UTC().Format(time.RFC3339)}
}

// ParsePublishedIssuer reads a published issuer's ConfigMap data; an
// invalid one is refused, with what is wrong.
func ParsePublishedIssuer(data map[string]string) (PublishedIssuer, error) {
	p := PublishedIssuer{Issuer: data[IssuerKey]}
	errs := []error{ValidateIssuer(p.Issuer)}
	if raw, ok := data[IssuerObservedAtKey]; ok {
		at, err := time.Parse(time.RFC3339, raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q is not an RFC 3339 time", IssuerObservedAtKey, Truncate(raw)))
		}
		p.ObservedAt = at
	}
	return p, errors.Join(errs...)
}

// ValidateIssuer checks an issuer as OIDC discovery serves it: the API
// server serves discovery only for an https URL, and OpenID Connect
// Discovery allows no query or fragment in it.
func ValidateIssuer(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", IssuerKey)
	case len(s) > MaxIssuerLen:
		return fmt.Errorf("%s is %d bytes, longer than the %d an issuer may be", IssuerKey, len(s), MaxIssuerLen)
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("%s %q holds a space or a control character", IssuerKey, Truncate(s))
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("%s %q is not a URL", IssuerKey, Truncate(s))
	case u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("%s %q is not an https URL with a host", IssuerKey, Truncate(s))
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Errorf("%s %q has user information, a query or a fragment, which an issuer has not", IssuerKey, Truncate(s))
	}
	return nil
}
