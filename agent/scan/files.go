package scan

import (
	"errors"
	"fmt"
	"path"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/protocol"
)

// Limits on what one volume may make the scanner do.
const (
	maxDepth      = 8    // directory levels below the volume
	maxDirEntries = 1024 // entries read from one directory
)

// visitFunc receives each file of a volume: its path relative to the volume
// and either the claims of the JWT it holds (header and payload, valid only
// during the call; nil when the file is not a JWT) or a problem that kept it
// from being read.
type visitFunc func(rel string, claims []byte, problem string)

// problemMissing is the problem of a path that does not exist.
const problemMissing = "dangling link, or removed during the scan"

// volumeReader reads projected volumes safely. Every path is resolved by the
// kernel with openat2(RESOLVE_BENEATH): links are followed only where they
// stay inside the volume directory (the AtomicWriter layout), absolute links
// and ".." escapes fail. A file is first opened O_PATH, which never touches
// the file itself, and is opened for reading only when it is a regular file
// of at most token.MaxSize bytes, then with O_NONBLOCK and checked again.
//
// A file is read only up to the end of a JWT's claims, never its signature,
// so the agent never holds a usable credential: see read.
type volumeReader struct {
	buf     []byte // claims read, cleared after each file
	dirents []byte // getdents buffer
	// partial lists the directories read only in part (more entries than
	// maxDirEntries), for the report.
	partial []string
	// volume is the directory of the volume being read, for messages.
	volume string
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
//
// direct are paths read even when the listing does not reach them (beyond
// the entry cap, or deeper): the pod's service-account tokens. One that
// does not exist is skipped.
func (r *volumeReader) readVolume(parent int, name, dir string, direct []string, visit visitFunc) (bool, error) {
	dfd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening volume %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	names, truncated, err := r.readNames(dfd)
	if err != nil {
		return true, fmt.Errorf("reading volume %s: %w", dir, err)
	}
	r.volume = dir
	if truncated {
		r.notePartial("")
	}
	seen := make([]bool, len(direct))
	walkVisit := visit
	if len(direct) > 0 {
		walkVisit = func(rel string, claims []byte, problem string) {
			if i := slices.Index(direct, rel); i >= 0 {
				seen[i] = true
			}
			visit(rel, claims, problem)
		}
	}
	for _, name := range names {
		if err := r.walk(dfd, name, 1, nil, walkVisit); err != nil {
			return true, fmt.Errorf("reading volume %s: %w", dir, err)
		}
	}
	for i, rel := range direct {
		if seen[i] {
			continue
		}
		err := r.walk(dfd, rel, 1, nil, func(rel string, claims []byte, problem string) {
			if problem != problemMissing {
				visit(rel, claims, problem)
			}
		})
		if err != nil {
			return true, fmt.Errorf("reading volume %s: %w", dir, err)
		}
	}
	return true, nil
}

// notePartial records that the directory rel of the volume being read held
// more entries than are read.
func (r *volumeReader) notePartial(rel string) {
	where := r.volume
	if rel != "" {
		where = path.Join(r.volume, protocol.Truncate(rel))
	}
	r.partial = append(r.partial, fmt.Sprintf("%q holds more than %d entries; only the first %d were read, and tokens among the rest are not judged", where, maxDirEntries, maxDirEntries))
}

// readNames lists a directory's visible entries, at most maxDirEntries;
// truncated says there were more. It reads dirfd's entries itself
// (getdents), sparing an os.File per directory.
func (r *volumeReader) readNames(dirfd int) (names []string, truncated bool, err error) {
	for len(names) <= maxDirEntries {
		n, err := unix.Getdents(dirfd, r.dirents)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if n <= 0 {
			break
		}
		// One more than the cap, to know whether there were more.
		_, _, names = unix.ParseDirent(r.dirents[:n], maxDirEntries+1-len(names), names)
	}
	if len(names) > maxDirEntries {
		names, truncated = names[:maxDirEntries], true
	}
	visible := names[:0]
	for _, n := range names {
		if !strings.HasPrefix(n, "..") {
			visible = append(visible, n)
		}
	}
	return visible, truncated, nil
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
		names, truncated, err := r.readNames(sub)
		unix.Close(sub)
		if err != nil {
			visit(rel, nil, "cannot list directory: "+err.Error())
			return nil //nolint:nilerr // reported to visit as this directory's problem
		}
		if truncated {
			r.notePartial(rel)
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
		claims, problem := r.read(dfd, rel, id)
		visit(rel, claims, problem)
		clear(claims)
	default:
		visit(rel, nil, "not a regular file ("+typeName(st.Mode)+"); not opened")
	}
	return nil
}

// read opens a file seen as regular and returns the claims of the JWT it
// holds (header and payload), nil when it holds none. O_NONBLOCK keeps a
// file swapped for a FIFO since from blocking the open; what was opened must
// be the same file.
//
// The signature is never read: no read can stop at a byte it has not seen,
// so read takes only the first token.MinClaims bytes with read(2) (fewer
// than any JWT's claims; enough to tell most files that are not JWTs), then
// maps the file and looks at it one byte at a time up to the '.' that ends
// the claims (token.ClaimsEnd), copying only those bytes. The signature stays
// in the page cache, in pages this process maps for a moment and never
// touches.
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
	if st.Size > token.MaxSize {
		return nil, fmt.Sprintf("file grew past the %d bytes a token can be; not read", token.MaxSize)
	}
	size := int(st.Size)
	if size <= token.MinClaims {
		return nil, "" // too short to hold a JWT
	}
	prefix := r.buf[:token.MinClaims]
	for n := 0; n < len(prefix); {
		m, err := unix.Pread(fd, prefix[n:], int64(n))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			clear(prefix[:n])
			return nil, "cannot read: " + err.Error()
		}
		if m == 0 {
			clear(prefix[:n])
			return nil, "file shrank during the scan; not read"
		}
		n += m
	}
	couldBe := token.CouldBeJWT(prefix)
	clear(prefix)
	if !couldBe {
		return nil, ""
	}
	return r.mapClaims(fd, size)
}

// mapClaims maps size bytes of the file fd and copies the claims of the JWT
// it holds into r.buf, looking at no byte past them.
func (r *volumeReader) mapClaims(fd, size int) ([]byte, string) {
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, "cannot map: " + err.Error()
	}
	defer unix.Munmap(mem) //nolint:errcheck // nothing to do about a failed unmap of a read-only mapping
	end, ok, fault := claimsOf(mem, r.buf)
	switch {
	case fault:
		clear(r.buf[:size])
		return nil, "file shrank during the scan; not read"
	case !ok:
		return nil, ""
	}
	return r.buf[:end], ""
}

// claimsOf copies the claims of the JWT that mem maps into buf. A mapped
// file truncated meanwhile faults: the fault is caught, not fatal.
func claimsOf(mem, buf []byte) (end int, ok, fault bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			if _, isRuntime := p.(runtime.Error); !isRuntime {
				panic(p)
			}
			end, ok, fault = 0, false, true
		}
	}()
	if end, ok = token.ClaimsEnd(mem); ok {
		copy(buf, mem[:end])
	}
	return end, ok, false
}

func openProblem(err error) string {
	switch {
	case errors.Is(err, unix.EXDEV):
		return "link resolves outside the volume directory; not followed"
	case errors.Is(err, unix.ELOOP):
		return "symbolic link loop; not followed"
	case errors.Is(err, unix.ENOENT):
		return problemMissing
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
