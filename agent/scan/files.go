package scan

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/tokenroll/tokenroll/agent/token"
)

// Limits on what one volume may make the scanner do.
const (
	maxDepth      = 8    // directory levels below the volume
	maxDirEntries = 1024 // entries read from one directory
)

// visitFunc receives each file of a volume: its path relative to the volume
// and either its bytes (valid only during the call) or a problem that kept it
// from being read.
type visitFunc func(rel string, data []byte, problem string)

// volumeReader reads projected volumes safely: only regular files of at most
// token.MaxSize bytes, links followed only where they resolve inside the
// same volume (os.Root enforces it), nothing opened in a way that can block.
type volumeReader struct {
	buf []byte
}

func newVolumeReader() *volumeReader { return &volumeReader{buf: make([]byte, token.MaxSize+1)} }

// readVolume visits every visible file under dir. The kubelet's own entries
// ("..data", the timestamped payload directory) are reached through the
// visible links, never directly.
func (r *volumeReader) readVolume(dir string, visit visitFunc) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("opening volume %s: %w", dir, err)
	}
	defer root.Close()
	top, err := root.Stat(".")
	if err != nil {
		return fmt.Errorf("reading volume %s: %w", dir, err)
	}
	names, err := readNames(root, ".")
	if err != nil {
		return fmt.Errorf("reading volume %s: %w", dir, err)
	}
	seen := []os.FileInfo{top}
	for _, name := range names {
		r.walk(root, name, 1, seen, visit)
	}
	return nil
}

func readNames(root *os.Root, rel string) ([]string, error) {
	f, err := root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(maxDirEntries)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	var visible []string
	for _, n := range names {
		if !strings.HasPrefix(n, "..") {
			visible = append(visible, n)
		}
	}
	return visible, err
}

func (r *volumeReader) walk(root *os.Root, rel string, depth int, seen []os.FileInfo, visit visitFunc) {
	st, err := root.Stat(rel)
	if err != nil {
		visit(rel, nil, statProblem(err))
		return
	}
	switch mode := st.Mode(); {
	case mode.IsDir():
		for _, s := range seen {
			if os.SameFile(s, st) {
				visit(rel, nil, "directory loop: a link leads back to a directory above it; not followed")
				return
			}
		}
		if depth >= maxDepth {
			visit(rel, nil, fmt.Sprintf("directories nested deeper than %d levels; not followed", maxDepth))
			return
		}
		names, err := readNames(root, rel)
		if err != nil {
			visit(rel, nil, "cannot list directory: "+errText(err))
			return
		}
		for _, name := range names {
			r.walk(root, path.Join(rel, name), depth+1, append(seen, st), visit)
		}
	case !mode.IsRegular():
		visit(rel, nil, "not a regular file ("+typeName(mode)+"); not opened")
	case st.Size() > token.MaxSize:
		visit(rel, nil, fmt.Sprintf("file is %d bytes, larger than the %d a token can be; not read", st.Size(), token.MaxSize))
	default:
		data, problem := r.read(root, rel)
		visit(rel, data, problem)
		clear(data)
	}
}

// read opens a file that Stat saw as regular. O_NONBLOCK keeps a file
// swapped for a FIFO since from blocking the open; the size check is
// repeated on what was opened.
func (r *volumeReader) read(root *os.Root, rel string) ([]byte, string) {
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, "cannot open: " + errText(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, "cannot stat: " + errText(err)
	}
	if !st.Mode().IsRegular() {
		return nil, "not a regular file (" + typeName(st.Mode()) + ") when opened; not read"
	}
	n, err := io.ReadFull(f, r.buf)
	switch {
	case n > token.MaxSize:
		return nil, fmt.Sprintf("file grew past the %d bytes a token can be; not read", token.MaxSize)
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF):
		return nil, "cannot read: " + errText(err)
	}
	return r.buf[:n], ""
}

func statProblem(err error) string {
	switch {
	case strings.Contains(err.Error(), "path escapes from parent"):
		return "link resolves outside the volume directory; not followed"
	case errors.Is(err, syscall.ELOOP):
		return "symbolic link loop; not followed"
	case errors.Is(err, fs.ErrNotExist):
		return "dangling link or file removed during the scan"
	default:
		return "cannot stat: " + errText(err)
	}
}

// errText is the bare reason of a path error; the path is reported apart.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	default:
		return "irregular file"
	}
}
