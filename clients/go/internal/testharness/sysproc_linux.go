//go:build linux

package testharness

import "syscall"

// sysProcAttr asks the kernel to SIGKILL children when the test process dies
// (for example on a panic or a go test timeout), so no redis-server or sidecar
// outlives the run even when Cleanup never ran.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
