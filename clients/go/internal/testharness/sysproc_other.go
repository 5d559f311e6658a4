//go:build !linux

package testharness

import "syscall"

// sysProcAttr returns nil: outside Linux there is no parent-death signal, so
// children are only stopped by Cleanup.
func sysProcAttr() *syscall.SysProcAttr { return nil }
