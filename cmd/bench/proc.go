package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux configuration Go supports.
const clockTicks = 100

// procCPU reads a process's utime+stime from /proc/<pid>/stat (10 ms
// resolution: cells are long enough for that to be below 1%).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(ut+st) * time.Second / clockTicks
}

// procStatus reads a "Name:   value kB" line of /proc/<pid>/status, in
// bytes (for kB values) or as is.
func procStatus(pid int, name string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != name {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return -1
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n
	}
	return -1
}

// rssBytes is a process's resident set size (VmRSS).
func rssBytes(pid int) int64 { return procStatus(pid, "VmRSS") }

func pidCPU(name string, pid int) cpuSource {
	return cpuSource{name: name, read: func() time.Duration { return procCPU(pid) }}
}

// redisInfo reads the fields of one INFO section.
func redisInfo(ctx context.Context, c *redis.Client, section string) map[string]string {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, line := range strings.Split(s, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}

// redisCPU is Redis's own CPU account (INFO cpu: used_cpu_user+sys, µs
// resolution).
func redisCPU(c *redis.Client) cpuSource {
	return cpuSource{name: "redis", read: func() time.Duration {
		info := redisInfo(context.Background(), c, "cpu")
		u, err1 := strconv.ParseFloat(info["used_cpu_user"], 64)
		s, err2 := strconv.ParseFloat(info["used_cpu_sys"], 64)
		if err1 != nil || err2 != nil {
			return -1
		}
		return time.Duration((u + s) * float64(time.Second))
	}}
}

// redisPID is the redis-server's process id (INFO server).
func redisPID(c *redis.Client) int {
	n, _ := strconv.Atoi(redisInfo(context.Background(), c, "server")["process_id"])
	return n
}

// cmdStat is one command's INFO commandstats: calls, and µs spent in them
// (a script's include the commands it runs, which count on their own too).
type cmdStat struct{ calls, usec int64 }

// redisCommandStats reads INFO commandstats.
func redisCommandStats(ctx context.Context, c *redis.Client) map[string]cmdStat {
	out := map[string]cmdStat{}
	for k, v := range redisInfo(ctx, c, "commandstats") {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		var st cmdStat
		for _, kv := range strings.Split(v, ",") {
			if n, ok := strings.CutPrefix(kv, "calls="); ok {
				st.calls, _ = strconv.ParseInt(n, 10, 64)
			} else if n, ok := strings.CutPrefix(kv, "usec="); ok {
				st.usec, _ = strconv.ParseInt(n, 10, 64)
			}
		}
		out[name] = st
	}
	return out
}
