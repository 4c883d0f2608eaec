package benchkit

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Histogram is a Prometheus histogram summed over the series a reading
// kept: cumulative counts by upper bound, and the sum and count.
type Histogram struct {
	Buckets map[float64]float64
	Sum     float64
	Count   float64
}

// ParseHistogram picks the histogram name out of the Prometheus text
// format, adding up the series whose labels (le aside) keep accepts; nil
// keep accepts all.
func ParseHistogram(body []byte, name string, keep func(labels map[string]string) bool) (Histogram, error) {
	h := Histogram{Buckets: map[float64]float64{}}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var part, rest string
		for _, p := range []string{"_bucket", "_sum", "_count"} {
			if r, ok := strings.CutPrefix(line, name+p); ok && (strings.HasPrefix(r, "{") || strings.HasPrefix(r, " ")) {
				part, rest = p, r
				break
			}
		}
		if part == "" {
			continue
		}
		labels, value := map[string]string{}, strings.TrimSpace(rest)
		if r, ok := strings.CutPrefix(rest, "{"); ok {
			var err error
			if labels, value, err = splitSample(r); err != nil {
				return h, fmt.Errorf("parsing %q: %w", line, err)
			}
		} else {
			value, _, _ = strings.Cut(value, " ")
		}
		le := labels["le"]
		delete(labels, "le")
		if keep != nil && !keep(labels) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return h, fmt.Errorf("parsing the value of %q: %w", line, err)
		}
		found = true
		switch part {
		case "_sum":
			h.Sum += v
		case "_count":
			h.Count += v
		default:
			bound, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return h, fmt.Errorf("parsing the bound of %q: %w", line, err)
			}
			h.Buckets[bound] += v
		}
	}
	if err := sc.Err(); err != nil {
		return h, err
	}
	if !found {
		return h, fmt.Errorf("no %s in the exposition", name)
	}
	return h, nil
}

// Minus is h - before: the observations made between two readings.
func (h Histogram) Minus(before Histogram) Histogram {
	out := Histogram{Buckets: map[float64]float64{}, Sum: h.Sum - before.Sum, Count: h.Count - before.Count}
	for b, v := range h.Buckets {
		out.Buckets[b] = v - before.Buckets[b]
	}
	return out
}

// Quantile estimates the q-quantile as Prometheus' histogram_quantile
// does: linear within the bucket it falls in. It is NaN without
// observations; a quantile in the +Inf bucket is the largest finite bound.
func (h Histogram) Quantile(q float64) float64 {
	if h.Count <= 0 {
		return math.NaN()
	}
	bounds := make([]float64, 0, len(h.Buckets))
	for b := range h.Buckets {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	rank := q * h.Count
	prevBound, prevCount := 0.0, 0.0
	for _, b := range bounds {
		c := h.Buckets[b]
		if c >= rank {
			if math.IsInf(b, 1) {
				return prevBound
			}
			if c == prevCount {
				return b
			}
			return prevBound + (b-prevBound)*(rank-prevCount)/(c-prevCount)
		}
		prevBound, prevCount = b, c
	}
	return prevBound
}

// MaxBound is the upper bound of the highest bucket that holds an
// observation: what a histogram can say of the largest one (+Inf when it
// is past the largest finite bound; 0 without observations).
func (h Histogram) MaxBound() float64 {
	bounds := make([]float64, 0, len(h.Buckets))
	for b := range h.Buckets {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	prev := 0.0
	for _, b := range bounds {
		if h.Buckets[b] >= h.Count {
			if h.Count == 0 || h.Buckets[b] == prev && prev == h.Count {
				return 0
			}
			return b
		}
		prev = h.Buckets[b]
	}
	return math.Inf(1)
}
