package token

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file decodes a token's JSON payload by hand. encoding/json was a
// quarter of a volume scan's time; this decoder reads exactly the claims
// tokenroll needs, skips (and validates) everything else, and allocates only
// the strings it keeps.
//
// It follows encoding/json's Unmarshal into the struct Parse once used,
// with three deliberate differences:
//
//   - Keys match exactly. encoding/json would also take "IAT" or "Iss" for
//     "iat" and "iss"; the API server writes lowercase keys, and a token
//     whose keys differ only in case is not one it wrote.
//   - Arrays and objects may nest at most maxNesting deep (encoding/json
//     allows 10000), so a hostile payload cannot run the decoder deep.
//   - A number too large for a float64 in iat, exp or warnafter is reported
//     without quoting it ("claim \"iat\" is a number out of range").
//
// Otherwise it keeps encoding/json's behaviour: the whole payload must be
// one valid JSON value; a syntax error anywhere wins over a claim of the
// wrong type, and of those the first in the payload is reported; for a
// duplicate key the last value wins, and duplicate objects merge; null
// leaves a string claim or an object as it was and unsets a date or aud;
// strings are unescaped and invalid UTF-8 becomes U+FFFD. No error quotes
// the payload: errors give byte offsets and claim names only.

// maxNesting is how deeply arrays and objects may nest in a payload. A
// bound token's payload nests three deep.
const maxNesting = 64

// number is a JSON number claim: a NumericDate, possibly fractional.
type number struct {
	set bool
	f   float64
}

// wireClaims are the claims as the payload carries them.
type wireClaims struct {
	Iss string
	// Aud is nil when aud is absent or null, one string when it is a
	// string, and non-nil (perhaps empty) when it is a list; a null in the
	// list is "". AudBad is set, and Aud nil, when aud is any other value
	// or a list holding anything but strings and nulls.
	Aud    []string
	AudBad bool
	Iat    number
	Exp    number
	// Of the kubernetes.io object:
	Namespace      string
	PodName        string
	PodUID         string
	ServiceAccount string
	NodeName       string
	WarnAfter      number
}

// object names the objects whose members are claims; objNone is any other.
type object uint8

const (
	objNone object = iota
	objTop
	objKube
	objPod
	objServiceAccount
	objNode
)

// field names a claim.
type field uint8

const (
	fUnknown field = iota
	fIss
	fAud
	fIat
	fExp
	fKube
	fNamespace
	fPod
	fServiceAccount
	fNode
	fWarnAfter
	fPodName
	fPodUID
	fServiceAccountName
	fNodeName
)

// fieldNames are the claims' paths, as encoding/json names them in errors.
var fieldNames = [...]string{
	fIss:                "iss",
	fAud:                "aud",
	fIat:                "iat",
	fExp:                "exp",
	fKube:               "kubernetes.io",
	fNamespace:          "kubernetes.io.namespace",
	fPod:                "kubernetes.io.pod",
	fServiceAccount:     "kubernetes.io.serviceaccount",
	fNode:               "kubernetes.io.node",
	fWarnAfter:          "kubernetes.io.warnafter",
	fPodName:            "kubernetes.io.pod.name",
	fPodUID:             "kubernetes.io.pod.uid",
	fServiceAccountName: "kubernetes.io.serviceaccount.name",
	fNodeName:           "kubernetes.io.node.name",
}

// lookup finds the claim named key (unescaped) in an object of kind obj.
// Keys match exactly; see the comment at the top of this file.
func lookup(obj object, key []byte) field {
	switch obj {
	case objTop:
		switch string(key) {
		case "iss":
			return fIss
		case "aud":
			return fAud
		case "iat":
			return fIat
		case "exp":
			return fExp
		case "kubernetes.io":
			return fKube
		}
	case objKube:
		switch string(key) {
		case "namespace":
			return fNamespace
		case "pod":
			return fPod
		case "serviceaccount":
			return fServiceAccount
		case "node":
			return fNode
		case "warnafter":
			return fWarnAfter
		}
	case objPod:
		switch string(key) {
		case "name":
			return fPodName
		case "uid":
			return fPodUID
		}
	case objServiceAccount:
		if string(key) == "name" {
			return fServiceAccountName
		}
	case objNode:
		if string(key) == "name" {
			return fNodeName
		}
	}
	return fUnknown
}

// decodeWire decodes a token's JSON payload. Its errors quote no part of
// the payload.
func decodeWire(payload []byte) (wireClaims, error) {
	var w wireClaims
	d := decoder{data: payload, w: &w}
	if !d.top() {
		if d.tooDeep {
			return wireClaims{}, fmt.Errorf("payload nests arrays and objects deeper than %d (at byte %d)", maxNesting, d.errAt)
		}
		return wireClaims{}, fmt.Errorf("payload is not valid JSON (at byte %d)", d.errAt)
	}
	switch {
	case d.wrong == fUnknown && d.wrongKind != kindNone:
		return wireClaims{}, fmt.Errorf("payload is a JSON %s, not an object of claims", kindNames[d.wrongKind])
	case d.wrong != fUnknown && d.wrongKind == kindNone:
		return wireClaims{}, fmt.Errorf("claim %q is a number out of range", fieldNames[d.wrong])
	case d.wrong != fUnknown:
		return wireClaims{}, fmt.Errorf("claim %q has the wrong type (%s)", fieldNames[d.wrong], kindNames[d.wrongKind])
	}
	return w, nil
}

// decoder is a recursive-descent JSON decoder. Its methods return false on
// a syntax error, having set errAt; a claim of the wrong type is noted (the
// first only) and decoding goes on, since a later syntax error wins.
//
// Errors are kept as numbers, not error values: escape analysis does not
// tell a decoder's fields apart, so an error stored beside data would be
// taken for the payload, and every payload would move to the heap.
type decoder struct {
	data  []byte
	pos   int // next byte to read
	depth int // arrays and objects open
	w     *wireClaims
	// errAt is the offset of a syntax error, or of nesting too deep.
	errAt   int
	tooDeep bool
	// wrong is the first claim of the wrong type (fUnknown for the payload
	// itself), wrongKind what it held (kindNone for a number out of range).
	wrong     field
	wrongKind jsonKind
}

// syntaxError reports the byte at pos as not valid JSON. The offset is
// encoding/json's: the count of bytes read up to and including the bad one,
// or the payload's length when it ends too soon.
func (d *decoder) syntaxError() bool {
	off := len(d.data)
	if d.pos < len(d.data) {
		off = d.pos + 1
	}
	d.errAt = off
	return false
}

// wrongType notes that claim f, or the payload itself when f is fUnknown,
// holds a value of kind k.
func (d *decoder) wrongType(f field, k jsonKind) {
	if d.wrong == fUnknown && d.wrongKind == kindNone {
		d.wrong, d.wrongKind = f, k
	}
}

// outOfRange notes that number claim f is too large for a float64.
func (d *decoder) outOfRange(f field) {
	if d.wrong == fUnknown && d.wrongKind == kindNone {
		d.wrong = f
	}
}

func (d *decoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end of the payload (0 starts no
// JSON value, so it always leads to a syntax error).
func (d *decoder) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

// jsonKind is the kind of a JSON value.
type jsonKind uint8

const (
	kindNone jsonKind = iota
	kindObject
	kindArray
	kindString
	kindBool
	kindNull
	kindNumber
)

// kindNames name the kinds as encoding/json does in type errors.
var kindNames = [...]string{
	kindObject: "object",
	kindArray:  "array",
	kindString: "string",
	kindBool:   "bool",
	kindNull:   "null",
	kindNumber: "number",
}

// kind is the kind of JSON value that c starts, or kindNone.
func kind(c byte) jsonKind {
	switch c {
	case '{':
		return kindObject
	case '[':
		return kindArray
	case '"':
		return kindString
	case 't', 'f':
		return kindBool
	case 'n':
		return kindNull
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return kindNumber
	}
	return kindNone
}

// top decodes the whole payload: one JSON value, with space around it.
func (d *decoder) top() bool {
	d.skipSpace()
	switch c := d.peek(); c {
	case '{':
		if !d.object(objTop) {
			return false
		}
	case 'n':
		// Unmarshal leaves the claims as they were.
		if !d.literal("null") {
			return false
		}
	default:
		k := kind(c)
		if k == kindNone {
			return d.syntaxError()
		}
		d.wrongType(fUnknown, k)
		if !d.skipValue() {
			return false
		}
	}
	d.skipSpace()
	if d.pos < len(d.data) {
		return d.syntaxError()
	}
	return true
}

// enter opens the array or object at pos.
func (d *decoder) enter() bool {
	if d.depth >= maxNesting {
		d.errAt, d.tooDeep = d.pos+1, true
		return false
	}
	d.depth++
	d.pos++
	d.skipSpace()
	return true
}

// object decodes the object at pos, whose members are claims when obj is
// not objNone.
func (d *decoder) object(obj object) bool {
	if !d.enter() {
		return false
	}
	if d.peek() == '}' {
		d.pos++
		d.depth--
		return true
	}
	for {
		if d.peek() != '"' {
			return d.syntaxError()
		}
		start := d.pos
		plain, ok := d.scanString()
		if !ok {
			return false
		}
		f := fUnknown
		if obj != objNone {
			key := d.data[start+1 : d.pos-1]
			if plain {
				f = lookup(obj, key)
			} else {
				var buf [32]byte
				f = lookup(obj, appendUnquoted(buf[:0], key))
			}
		}
		d.skipSpace()
		if d.peek() != ':' {
			return d.syntaxError()
		}
		d.pos++
		d.skipSpace()
		if !d.member(f) {
			return false
		}
		d.skipSpace()
		switch d.peek() {
		case ',':
			d.pos++
			d.skipSpace()
		case '}':
			d.pos++
			d.depth--
			return true
		default:
			return d.syntaxError()
		}
	}
}

// member decodes the value at pos into claim f.
func (d *decoder) member(f field) bool {
	w := d.w
	switch f {
	case fIss:
		return d.stringClaim(f, &w.Iss)
	case fNamespace:
		return d.stringClaim(f, &w.Namespace)
	case fPodName:
		return d.stringClaim(f, &w.PodName)
	case fPodUID:
		return d.stringClaim(f, &w.PodUID)
	case fServiceAccountName:
		return d.stringClaim(f, &w.ServiceAccount)
	case fNodeName:
		return d.stringClaim(f, &w.NodeName)
	case fIat:
		return d.numberClaim(f, &w.Iat)
	case fExp:
		return d.numberClaim(f, &w.Exp)
	case fWarnAfter:
		return d.numberClaim(f, &w.WarnAfter)
	case fKube:
		return d.objectClaim(f, objKube)
	case fPod:
		return d.objectClaim(f, objPod)
	case fServiceAccount:
		return d.objectClaim(f, objServiceAccount)
	case fNode:
		return d.objectClaim(f, objNode)
	case fAud:
		return d.audClaim()
	}
	return d.skipValue()
}

// stringClaim decodes a string claim; null leaves it as it was.
func (d *decoder) stringClaim(f field, dst *string) bool {
	switch c := d.peek(); c {
	case '"':
		s, ok := d.readString()
		if ok {
			*dst = s
		}
		return ok
	case 'n':
		return d.literal("null")
	default:
		return d.wrongValue(f, c)
	}
}

// numberClaim decodes a number claim; null unsets it.
func (d *decoder) numberClaim(f field, dst *number) bool {
	switch c := d.peek(); c {
	case 'n':
		*dst = number{}
		return d.literal("null")
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		raw, ok := d.scanNumber()
		if !ok {
			return false
		}
		if v, ok := parseNumber(raw); ok {
			*dst = number{set: true, f: v}
		} else {
			d.outOfRange(f)
		}
		return true
	default:
		return d.wrongValue(f, c)
	}
}

// objectClaim decodes an object whose members are claims, merging into what
// an earlier one with the same key set; null leaves it as it was.
func (d *decoder) objectClaim(f field, obj object) bool {
	switch c := d.peek(); c {
	case '{':
		return d.object(obj)
	case 'n':
		return d.literal("null")
	default:
		return d.wrongValue(f, c)
	}
}

// audClaim decodes aud: a string, a list of strings, or null for none.
func (d *decoder) audClaim() bool {
	w := d.w
	switch c := d.peek(); c {
	case '"':
		s, ok := d.readString()
		if !ok {
			return false
		}
		w.Aud, w.AudBad = []string{s}, false
		return true
	case 'n':
		w.Aud, w.AudBad = nil, false
		return d.literal("null")
	case '[':
	default:
		if kind(c) == kindNone {
			return d.syntaxError()
		}
		w.Aud, w.AudBad = nil, true
		return d.skipValue()
	}
	if !d.enter() {
		return false
	}
	// Gather the list on the stack and copy it out once: a token has one
	// or two audiences.
	var few [4]string
	list, bad := few[:0], false
	if d.peek() == ']' {
		d.pos++
		d.depth--
		w.Aud, w.AudBad = []string{}, false
		return true
	}
	for {
		switch c := d.peek(); c {
		case '"':
			s, ok := d.readString()
			if !ok {
				return false
			}
			list = append(list, s)
		case 'n':
			if !d.literal("null") {
				return false
			}
			list = append(list, "")
		default:
			bad = true
			if !d.skipValue() {
				return false
			}
		}
		d.skipSpace()
		switch d.peek() {
		case ',':
			d.pos++
			d.skipSpace()
		case ']':
			d.pos++
			d.depth--
			if bad {
				w.Aud, w.AudBad = nil, true
			} else {
				w.Aud, w.AudBad = make([]string, len(list)), false
				copy(w.Aud, list)
			}
			return true
		default:
			return d.syntaxError()
		}
	}
}

// wrongValue notes that claim f holds a value of the wrong type, starting
// with c, and skips it.
func (d *decoder) wrongValue(f field, c byte) bool {
	k := kind(c)
	if k == kindNone {
		return d.syntaxError()
	}
	d.wrongType(f, k)
	return d.skipValue()
}

// skipValue validates and skips any JSON value.
func (d *decoder) skipValue() bool {
	switch d.peek() {
	case '{':
		return d.object(objNone)
	case '[':
		if !d.enter() {
			return false
		}
		if d.peek() == ']' {
			d.pos++
			d.depth--
			return true
		}
		for {
			if !d.skipValue() {
				return false
			}
			d.skipSpace()
			switch d.peek() {
			case ',':
				d.pos++
				d.skipSpace()
			case ']':
				d.pos++
				d.depth--
				return true
			default:
				return d.syntaxError()
			}
		}
	case '"':
		_, ok := d.scanString()
		return ok
	case 't':
		return d.literal("true")
	case 'f':
		return d.literal("false")
	case 'n':
		return d.literal("null")
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		_, ok := d.scanNumber()
		return ok
	}
	return d.syntaxError()
}

// literal consumes lit (true, false or null) at pos.
func (d *decoder) literal(lit string) bool {
	for i := 0; i < len(lit); i++ {
		if d.peek() != lit[i] {
			return d.syntaxError()
		}
		d.pos++
	}
	return true
}

// plainByte marks the bytes a string holds as they are: printable ASCII but
// for the quote and the backslash.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString validates and skips the string at pos (its opening quote).
// plain reports that it holds neither an escape nor a non-ASCII byte, so
// its bytes are its value.
func (d *decoder) scanString() (plain, ok bool) {
	data, i := d.data, d.pos+1
	plain = true
	for {
		for i < len(data) && plainByte[data[i]] {
			i++
		}
		if i >= len(data) {
			d.pos = i
			return false, d.syntaxError()
		}
		switch c := data[i]; {
		case c == '"':
			d.pos = i + 1
			return plain, true
		case c >= utf8.RuneSelf:
			plain = false
			i++
		case c == '\\':
			plain = false
			i++
			if i >= len(data) {
				d.pos = i
				return false, d.syntaxError()
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				i++
				for range 4 {
					if i >= len(data) || !isHex(data[i]) {
						d.pos = i
						return false, d.syntaxError()
					}
					i++
				}
			default:
				d.pos = i
				return false, d.syntaxError()
			}
		default: // a control character
			d.pos = i
			return false, d.syntaxError()
		}
	}
}

// readString decodes the string at pos.
func (d *decoder) readString() (string, bool) {
	start := d.pos
	plain, ok := d.scanString()
	if !ok {
		return "", false
	}
	raw := d.data[start+1 : d.pos-1]
	if plain {
		return string(raw), true
	}
	return string(appendUnquoted(make([]byte, 0, len(raw)), raw)), true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber validates and skips the number at pos, returning its text.
func (d *decoder) scanNumber() ([]byte, bool) {
	start := d.pos
	if d.peek() == '-' {
		d.pos++
	}
	switch c := d.peek(); {
	case c == '0':
		d.pos++
	case c >= '1' && c <= '9':
		d.pos++
		for isDigit(d.peek()) {
			d.pos++
		}
	default:
		return nil, d.syntaxError()
	}
	if d.peek() == '.' {
		d.pos++
		if !isDigit(d.peek()) {
			return nil, d.syntaxError()
		}
		for isDigit(d.peek()) {
			d.pos++
		}
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.pos++
		if c := d.peek(); c == '+' || c == '-' {
			d.pos++
		}
		if !isDigit(d.peek()) {
			return nil, d.syntaxError()
		}
		for isDigit(d.peek()) {
			d.pos++
		}
	}
	return d.data[start:d.pos], true
}

// parseNumber converts valid JSON number text to a float64 as encoding/json
// does; ok is false when it is out of a float64's range.
func parseNumber(raw []byte) (float64, bool) {
	// Whole numbers of up to 15 digits, such as every date the API server
	// writes, are exact in a float64.
	digits, neg := raw, false
	if len(digits) > 0 && digits[0] == '-' {
		digits, neg = digits[1:], true
	}
	if len(digits) > 0 && len(digits) <= 15 {
		var n int64
		whole := true
		for _, c := range digits {
			if !isDigit(c) {
				whole = false
				break
			}
			n = n*10 + int64(c-'0')
		}
		if whole {
			f := float64(n)
			if neg {
				f = -f
			}
			return f, true
		}
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	return f, err == nil
}

// appendUnquoted appends the value of a JSON string to dst, given the bytes
// between its quotes as scanString validated them. It unescapes as
// encoding/json does: an unpaired surrogate escape and each byte of invalid
// UTF-8 become U+FFFD.
func appendUnquoted(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == '\\' && i+1 < len(raw):
			switch e := raw[i+1]; e {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := u4(raw[i:])
				if r < 0 {
					// Not after scanString; keep the backslash.
					dst = append(dst, c)
					i++
					continue
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if dec := utf16.DecodeRune(r, u4(raw[i:])); dec != utf8.RuneError {
						dst = utf8.AppendRune(dst, dec)
						i += 6
						continue
					}
					r = utf8.RuneError
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default: // '"', '\\', '/'
				dst = append(dst, e)
			}
			i += 2
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRune(raw[i:])
			dst = utf8.AppendRune(dst, r)
			i += size
		}
	}
	return dst
}

// u4 decodes the \uXXXX escape at the start of s, or returns -1.
func u4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
