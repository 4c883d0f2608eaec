package benchkit

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture Go runs on.
const clockTicks = 100

// ProcUsage is what /proc says of one process at one moment.
type ProcUsage struct {
	// CPUSeconds is user plus system time since the process started.
	CPUSeconds float64
	// RSSBytes is its resident memory (VmRSS).
	RSSBytes int64
}

// ReadProc reads pid's CPU time and resident memory from /proc.
func ReadProc(pid int) (ProcUsage, error) {
	var u ProcUsage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("reading the CPU time of process %d: %w", pid, err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return u, fmt.Errorf("/proc/%d/stat has no command name", pid)
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is field 3 (state): utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return u, fmt.Errorf("/proc/%d/stat has %d fields after the name, want at least 13", pid, len(fields))
	}
	for _, f := range fields[11:13] {
		t, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return u, fmt.Errorf("/proc/%d/stat: CPU time %q: %w", pid, f, err)
		}
		u.CPUSeconds += t / clockTicks
	}
	status, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("reading the memory of process %d: %w", pid, err)
	}
	defer status.Close()
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return u, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, rest, err)
			}
			u.RSSBytes = kb * 1024
			return u, nil
		}
	}
	return u, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}
