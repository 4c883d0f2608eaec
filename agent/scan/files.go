package scan

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"

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

// volumeReader reads projected volumes safely. Every path is resolved by the
// kernel with openat2(RESOLVE_BENEATH): links are followed only where they
// stay inside the volume directory (the AtomicWriter layout), absolute links
// and ".." escapes fail. A file is first opened O_PATH, which never touches
// the file itself, and is opened for reading only when it is a regular file
// of at most token.MaxSize bytes, then with O_NONBLOCK and checked again.
type volumeReader struct {
	buf     []byte // file contents, cleared after each file
	dirents []byte // getdents buffer
}

func newVolumeReader() *volumeReader {
	return &volumeReader{buf: make([]byte, token.MaxSize+1), dirents: make([]byte, 16<<10)}
}

type fileID struct{ dev, ino uint64 }

func resolveBeneath(dirfd int, rel string, flags uint64) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
			Flags:   flags | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			return fd, err
		}
	}
}

// readVolume visits every visible file of the volume directory name under
// the open directory parent (dir is its path, for messages). The kubelet's
// own entries ("..data", the timestamped payload directory) are reached
// through the visible links, never directly. It reports false when name is
// not a directory (nothing the kubelet writes there).
func (r *volumeReader) readVolume(parent int, name, dir string, visit visitFunc) (bool, error) {
	dfd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening volume %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	names, err := r.readNames(dfd)
	if err != nil {
		return true, fmt.Errorf("reading volume %s: %w", dir, err)
	}
	for _, name := range names {
		if err := r.walk(dfd, name, 1, nil, visit); err != nil {
			return true, fmt.Errorf("reading volume %s: %w", dir, err)
		}
	}
	return true, nil
}

// readNames lists a directory's visible entries, at most maxDirEntries. It
// reads dirfd's entries itself (getdents), sparing an os.File per directory.
func (r *volumeReader) readNames(dirfd int) ([]string, error) {
	var names []string
	for len(names) < maxDirEntries {
		n, err := unix.Getdents(dirfd, r.dirents)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(r.dirents[:n], maxDirEntries-len(names), names)
	}
	visible := names[:0]
	for _, n := range names {
		if !strings.HasPrefix(n, "..") {
			visible = append(visible, n)
		}
	}
	return visible, nil
}

// walk visits rel; it returns an error only when the kernel lacks openat2,
// where nothing can be read safely.
func (r *volumeReader) walk(dfd int, rel string, depth int, seen []fileID, visit visitFunc) error {
	pfd, err := resolveBeneath(dfd, rel, unix.O_PATH)
	if errors.Is(err, unix.ENOSYS) {
		return errors.New("this kernel has no openat2 (Linux 5.6 or later is required to read volumes safely)")
	}
	if err != nil {
		visit(rel, nil, openProblem(err))
		return nil
	}
	var st unix.Stat_t
	err = unix.Fstat(pfd, &st)
	unix.Close(pfd)
	if err != nil {
		visit(rel, nil, "cannot stat: "+err.Error())
		return nil //nolint:nilerr // reported to visit as this file's problem
	}
	id := fileID{st.Dev, st.Ino}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if len(seen) == 0 {
			// The volume itself, fstatted only when a directory needs the
			// loop check (volumes rarely hold directories).
			var top unix.Stat_t
			if err := unix.Fstat(dfd, &top); err != nil {
				visit(rel, nil, "cannot stat the volume: "+err.Error())
				return nil //nolint:nilerr // reported to visit as this entry's problem
			}
			seen = []fileID{{top.Dev, top.Ino}}
		}
		for _, s := range seen {
			if s == id {
				visit(rel, nil, "directory loop: a link leads back to a directory above it; not followed")
				return nil
			}
		}
		if depth >= maxDepth {
			visit(rel, nil, fmt.Sprintf("directories nested deeper than %d levels; not followed", maxDepth))
			return nil
		}
		sub, err := resolveBeneath(dfd, rel, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			visit(rel, nil, openProblem(err))
			return nil
		}
		names, err := r.readNames(sub)
		unix.Close(sub)
		if err != nil {
			visit(rel, nil, "cannot list directory: "+err.Error())
			return nil //nolint:nilerr // reported to visit as this directory's problem
		}
		for _, name := range names {
			if err := r.walk(dfd, path.Join(rel, name), depth+1, append(seen, id), visit); err != nil {
				return err
			}
		}
	case unix.S_IFREG:
		if st.Size > token.MaxSize {
			visit(rel, nil, fmt.Sprintf("file is %d bytes, larger than the %d a token can be; not read", st.Size, token.MaxSize))
			return nil
		}
		data, problem := r.read(dfd, rel, id)
		visit(rel, data, problem)
		clear(data)
	default:
		visit(rel, nil, "not a regular file ("+typeName(st.Mode)+"); not opened")
	}
	return nil
}

// read opens a file seen as regular. O_NONBLOCK keeps a file swapped for a
// FIFO since from blocking the open; what was opened must be the same file.
func (r *volumeReader) read(dfd int, rel string, want fileID) ([]byte, string) {
	fd, err := resolveBeneath(dfd, rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return nil, openProblem(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, "cannot stat: " + err.Error()
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || (fileID{st.Dev, st.Ino}) != want {
		return nil, "file replaced during the scan; not read"
	}
	// Read what fstat saw, plus one byte to notice growth; a regular file
	// read to its size needs no extra read to see EOF.
	limit := min(int(st.Size)+1, len(r.buf))
	n := 0
	for n < limit {
		m, err := unix.Read(fd, r.buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			clear(r.buf[:n])
			return nil, "cannot read: " + err.Error()
		}
		if m == 0 {
			break
		}
		n += m
		if n == int(st.Size) {
			break
		}
	}
	if n > token.MaxSize {
		clear(r.buf[:n])
		return nil, fmt.Sprintf("file grew past the %d bytes a token can be; not read", token.MaxSize)
	}
	return r.buf[:n], ""
}

func openProblem(err error) string {
	switch {
	case errors.Is(err, unix.EXDEV):
		return "link resolves outside the volume directory; not followed"
	case errors.Is(err, unix.ELOOP):
		return "symbolic link loop; not followed"
	case errors.Is(err, unix.ENOENT):
		return "dangling link, or removed during the scan"
	default:
		return "cannot open: " + err.Error()
	}
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "named pipe"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFLNK:
		return "symbolic link"
	default:
		return "irregular file"
	}
}
