package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/redis/go-redis/v9"
)

// What calls cost Redis, from INFO commandstats (calls and usec of each
// command; a script's inner commands are counted as Redis counts them, the
// EVALSHA and each call it makes) and INFO cpu. The lockcost group measures
// one op type at a time with these; the scenario rows whose Row.Redis is
// set report commands and Redis CPU per op of each cell.

// commandDelta is the Redis commands run between two commandstats
// snapshots, per op, without the snapshots' own INFO calls.
func commandDelta(before, after map[string]cmdStat, ops int) map[string]float64 {
	out := map[string]float64{}
	for name, st := range after {
		if name == "info" {
			continue
		}
		if d := st.calls - before[name].calls; d > 0 {
			out[name] = float64(d) / float64(ops)
		}
	}
	return out
}

func commandTotal(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

func commandString(m map[string]float64) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		if m[k] < 0.005 {
			continue
		}
		fmt.Fprintf(&b, "%s %.2f ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// opCost is what one call cost Redis: commands by name, and the µs Redis
// spent in the calls its client sent (commandstats usec of the top-level
// commands: a script's usec includes its inner commands').
type opCost struct {
	cmds map[string]float64
	usec float64
}

// usecDelta is the µs per op of the top-level commands a client sends
// (the ones scripts run inside are already in EVALSHA's usec).
func usecDelta(before, after map[string]cmdStat, ops int) float64 {
	var d int64
	for _, name := range []string{"evalsha", "eval", "set", "get", "del"} {
		d += after[name].usec - before[name].usec
	}
	return float64(d) / float64(ops)
}

// redisCost is what a row's cell cost Redis per op: commands (Redis-wide
// commandstats deltas, the snapshots' own INFO calls excluded) and Redis's
// CPU time in µs. ok is false when the row has no Redis or a snapshot
// failed.
type redisCost struct {
	cmds, cpu float64
	ok        bool
}

// startRedisCost snapshots c's commandstats and CPU; the function it
// returns snapshots them again and divides the deltas by ops. A nil c
// costs nothing and reports !ok.
func startRedisCost(c *redis.Client) func(ops int64) redisCost {
	if c == nil {
		return func(int64) redisCost { return redisCost{} }
	}
	ctx := context.Background()
	rcpu := redisCPU(c)
	calls0, cpu0 := redisCommandStats(ctx, c), rcpu.read()
	return func(ops int64) redisCost {
		calls1, cpu1 := redisCommandStats(ctx, c), rcpu.read()
		if ops <= 0 || cpu0 < 0 || cpu1 < 0 || len(calls0) == 0 || len(calls1) == 0 {
			return redisCost{}
		}
		return redisCost{
			cmds: commandTotal(commandDelta(calls0, calls1, int(ops))),
			cpu:  float64((cpu1 - cpu0).Microseconds()) / float64(ops),
			ok:   true,
		}
	}
}

// columns are the cost's two table cells: commands per op and Redis CPU
// per op ("-" for a row without Redis).
func (c redisCost) columns() (cmds, cpu string) {
	if !c.ok {
		return "-", "-"
	}
	return fmt.Sprintf("%.1f", c.cmds), us(c.cpu)
}
