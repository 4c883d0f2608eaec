// Package logtest holds what tests need to read what a program writes while
// it runs.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer that one or more goroutines (a logger, a printer,
// a program's output) write while a test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
