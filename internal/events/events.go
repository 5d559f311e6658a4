// Package events is durable publish/subscribe between services, over a
// Store (Redis Streams or in-memory): events are appended to a log per
// topic and delivered at least once to every consumer group of the topic,
// with redelivery after a visibility timeout and a dead-letter topic after
// too many deliveries (docs/events.md).
//
// A pending event of a group goes through these states:
//
//	published --Read (new)--> pending (delivery 1, first delivery time recorded, due after the visibility timeout)
//	pending --Ack--> acked (gone from the group)
//	pending --Nack(retry_after)--> pending, due after retry_after
//	pending, due, deliveries < max --Read--> pending (delivery +1, due after the reader's visibility timeout)
//	pending, due, deliveries >= max --Read--> dead-lettered
//
// Every Store makes each transition atomic, so under concurrent readers an
// event is handed to one consumer per delivery and dead-lettered once.
package events

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Errors callers switch on.
var (
	// ErrTopicUnknown: the configuration declares topics and this is not
	// one of them (nor a dead-letter topic of one).
	ErrTopicUnknown = errors.New("events: topic unknown")
	// ErrNoGroup: Read found no such group (its topic was deleted, or
	// Redis lost it); subscribers create it again.
	ErrNoGroup = errors.New("events: no such consumer group")
	// ErrInvalid is wrapped by every *FieldError.
	ErrInvalid = errors.New("events: invalid argument")
)

// FieldError names the field of a Message or subscription that breaks a
// rule.
type FieldError struct {
	Field, Msg string
}

func (e *FieldError) Error() string        { return "events: " + e.Field + ": " + e.Msg }
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Limits of events (proto/resilience/v1/events.proto).
const (
	MaxTopicBytes      = 249
	MaxGroupBytes      = 128
	MaxEventKeyBytes   = 512
	MaxIdemKeyBytes    = 512
	MaxHeaders         = 64
	MaxHeaderNameBytes = 256
	MaxHeaderValBytes  = 8 << 10
	// DeadSuffix ends the name of a topic's dead-letter topic.
	DeadSuffix = ".dead"

	DefaultMaxPayloadBytes = 1 << 20
	DefaultMaxLen          = 1_000_000
	DefaultDedupRetention  = 24 * time.Hour
	DefaultVisibility      = 30 * time.Second
	MinVisibility          = 100 * time.Millisecond
	MaxVisibility          = 12 * time.Hour
	DefaultMaxDeliveries   = 10
	MaxMaxDeliveries       = 1000
	DefaultMaxInFlight     = 16
	MaxMaxInFlight         = 1000
	MaxRetryAfter          = 12 * time.Hour
	// DefaultPollInterval bounds each wait for new events, so pending
	// events that became visible again are claimed at most this late and a
	// wait notices shutdown.
	DefaultPollInterval = time.Second
)

// Message is one event to publish.
type Message struct {
	Topic, Key     string
	Payload        []byte
	Headers        map[string]string
	IdempotencyKey string
}

// Size is what Message counts against the payload limit: the payload plus
// every header name and value.
func (m Message) Size() int {
	n := len(m.Payload)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

// Published is the answer of Publish.
type Published struct {
	// EventID is the event's id in its topic ("<ms>-<seq>").
	EventID string
	// Duplicate: the idempotency key had been published before; EventID is
	// the first event's and nothing was appended.
	Duplicate bool
}

// OutboxStatus describes the Postgres outbox relay (internal/outbox), for
// GetOutboxStatus.
type OutboxStatus struct {
	Enabled, Healthy bool
	LastError        string
	// Active: this sidecar's relay holds the table (the others are
	// standbys).
	Active bool
	// Backlog counts the unpublished rows not refused, when BacklogKnown
	// (read by the active relay, in contact with Postgres).
	Backlog      int64
	BacklogKnown bool
	// Lag is the age of the oldest unpublished row not refused; it grows
	// while Postgres does not answer (see internal/outbox).
	Lag             time.Duration
	Published       int64
	LastPublishedAt time.Time
	Table           string
	// Refused counts the rows the active relay skips because Publish
	// refuses them for good; LastRefused names the latest still refused
	// and why; OldestRefusedAge is the age of the oldest.
	Refused          int64
	LastRefused      string
	OldestRefusedAge time.Duration
}

// OutboxRetry is the outcome of a retry of the outbox's refused rows.
type OutboxRetry struct {
	// Active: this sidecar's relay retried them; Published, Refused and
	// Gone count the rows published now, still refused, and forgotten
	// because they left the table (deleted, or published elsewhere).
	Active                   bool
	Published, Refused, Gone int64
	// Forwarded: this sidecar is a standby and asked the active relay.
	Forwarded bool
}

// Event is one stored event.
type Event struct {
	ID      string
	Topic   string
	Key     string
	Payload []byte
	Headers map[string]string
	// IdempotencyKey is the key it was published with ("" for none): a
	// consumer can drop a re-publish of the same key however late it
	// comes (after the dedup retention, it is appended again).
	IdempotencyKey string
	// PublishedAt is the millisecond part of ID.
	PublishedAt time.Time
}

// Delivery is one delivery of an event to a consumer.
type Delivery struct {
	Event
	// Count is 1 on the first delivery to the group, then +1 on each
	// redelivery (a delivery handed back undelivered does not count).
	Count int
	// FirstDeliveredAt is when the group first received the event, by the
	// store's clock.
	FirstDeliveredAt time.Time

	// readID is the read that handed it out (Subscription).
	readID string
}

// ReturnTombstoneTTL is how long a store remembers a read id handed back
// before its read ran, so that the read, if it still arrives (a request
// its caller gave up on), hands out nothing.
const ReturnTombstoneTTL = 5 * time.Minute

// StartFrom says where a new group starts.
type StartFrom int

// Start positions of a new group.
const (
	Earliest StartFrom = iota
	Latest
)

// PublishOptions are the store parameters of one publish.
type PublishOptions struct {
	// MaxLen bounds the topic's log (approximately on Redis: MAXLEN ~).
	MaxLen int64
	// DedupRetention is how long an idempotency key is remembered.
	DedupRetention time.Duration
}

// GroupOptions are the parameters of a new group.
type GroupOptions struct {
	Start StartFrom
}

// ReadOptions are the parameters of one Read.
type ReadOptions struct {
	// Count bounds the deliveries returned (> 0).
	Count int
	// Visibility is how long the events delivered by this Read stay
	// assigned to the consumer before they may be delivered again.
	Visibility time.Duration
	// MaxDeliveries: a claimable event delivered this many times already
	// goes to the dead-letter topic instead (never for a dead-letter
	// topic's own events).
	MaxDeliveries int
	// DeadMaxLen bounds the dead-letter topic's log.
	DeadMaxLen int64
	// ReadID, when set, names this read (unique per read: the caller
	// mints it), so that its deliveries can be handed back with Return if
	// they never reach the consumer's client, also when the caller never
	// learnt the read's outcome. A Read whose id was handed back before
	// it ran hands out nothing.
	ReadID string
}

// ReadResult is the answer of Read.
type ReadResult struct {
	Deliveries []Delivery
	// DeadLettered lists the events moved to the dead-letter topic.
	DeadLettered []string
	// LastID is the newest event of the topic when read, for Wait.
	LastID string
	// WakeID is the group's newest wake-up when read (a Nack, or a Return
	// that handed something back), for Wait.
	WakeID string
	// NextDue is how soon the group's earliest pending event not handed
	// out is due again; 0 when there is none.
	NextDue time.Duration
}

// Store keeps topics and groups. Implementations make each method one
// atomic step.
type Store interface {
	// Publish appends m (already validated) to its topic; with an
	// idempotency key already recorded it returns the recorded id with
	// Duplicate and appends nothing.
	Publish(ctx context.Context, m Message, opts PublishOptions) (Published, error)
	// EnsureGroup creates the group (at opts.Start) unless it exists, and
	// registers the consumer.
	EnsureGroup(ctx context.Context, topic, group, consumer string, opts GroupOptions) (created bool, err error)
	// Read hands consumer up to opts.Count events: first the group's
	// pending events that are due again (their delivery's visibility
	// timeout, or a nack's delay, passed; those delivered MaxDeliveries
	// times go to the dead-letter topic instead), then events never
	// delivered to the group, in publish order. It does not wait.
	Read(ctx context.Context, topic, group, consumer string, opts ReadOptions) (ReadResult, error)
	// Wait returns when the topic may hold events newer than lastID, or
	// the group had a wake-up newer than wakeID (a Nack or Return made a
	// pending event due sooner), after at most d, or when ctx ends
	// (returning nil then too). lastID and wakeID are those of a Read.
	Wait(ctx context.Context, topic, group, lastID, wakeID string, d time.Duration) error
	// Ack removes the event from the group's pending events; false when it
	// was not pending.
	Ack(ctx context.Context, topic, group, id string) (bool, error)
	// Nack makes the pending event due again after retryAfter; false when
	// it was not pending. It wakes the group's Waits, so that a short
	// retryAfter is honoured without waiting for their poll.
	Nack(ctx context.Context, topic, group, id string, retryAfter time.Duration) (bool, error)
	// Return hands back deliveries of the read readID (ReadOptions.ReadID)
	// that never reached the consumer's client: each of ids (every
	// delivery of the read when ids is nil) still pending to consumer
	// under that delivery (not acked, nacked or delivered again since)
	// becomes due at once, and its delivery count drops by one, so that
	// an undelivered delivery does not count towards MaxDeliveries (back
	// to 0, the first delivery time is forgotten too). When the read has
	// not run, it is remembered for ReturnTombstoneTTL and then hands out
	// nothing. Returns how many deliveries were handed back, and wakes
	// the group's Waits when that is more than none. Idempotent.
	Return(ctx context.Context, topic, group, consumer, readID string, ids []string) (int, error)
	// ExpireDedup shortens the retention of topic's idempotency keys
	// (those still recorded) to at most keep from now; a key expiring
	// sooner already is left alone. It returns how many it shortened.
	ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) (int, error)
}

// ValidTopicName reports the problem with a topic name, or "". dead says
// whether it names a dead-letter topic.
func ValidTopicName(name string) (problem string, dead bool) {
	switch {
	case name == "":
		return "must not be empty", false
	case len(name) > MaxTopicBytes:
		return fmt.Sprintf("must be at most %d bytes, got %d", MaxTopicBytes, len(name)), false
	case name[0] == '.':
		return "must not start with '.'", false
	case !nameChars(name):
		return "must contain only [A-Za-z0-9._-]", false
	}
	base, dead := strings.CutSuffix(name, DeadSuffix)
	if dead {
		if base == "" || base[0] == '.' {
			return "must name a topic before \".dead\"", true
		}
		if strings.HasSuffix(base, DeadSuffix) {
			return "a dead-letter topic has no dead-letter topic of its own", true
		}
	}
	return "", dead
}

// ValidName reports the problem with a group or consumer name, or "".
func ValidName(name string) string {
	switch {
	case name == "":
		return "must not be empty"
	case len(name) > MaxGroupBytes:
		return fmt.Sprintf("must be at most %d bytes, got %d", MaxGroupBytes, len(name))
	case !nameChars(name):
		return "must contain only [A-Za-z0-9._-]"
	}
	return ""
}

func nameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidEventID reports whether id has the shape "<ms>-<seq>".
func ValidEventID(id string) bool {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil && ms[0] != '+' && seq[0] != '+'
}

// idTime is the publish time encoded in an event id.
func idTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

// checkMessage returns the first problem of m as a *FieldError.
func checkMessage(m Message, maxPayload int) error {
	if p, dead := ValidTopicName(m.Topic); p != "" {
		return &FieldError{"topic", p}
	} else if dead {
		return &FieldError{"topic", "must not be a dead-letter topic (\".dead\"): only the sidecar publishes there"}
	}
	if ps := MessageProblems(m, maxPayload); len(ps) > 0 {
		return ps[0]
	}
	return nil
}

// MessageProblems returns the problems of m's key, idempotency key,
// headers and size against maxPayload, at most one per field and in that
// order. The topic is checked apart (ValidTopicName, Service.CheckTopic).
func MessageProblems(m Message, maxPayload int) []*FieldError {
	var ps []*FieldError
	add := func(field, format string, args ...any) {
		ps = append(ps, &FieldError{field, fmt.Sprintf(format, args...)})
	}
	if len(m.Key) > MaxEventKeyBytes {
		add("key", "must be at most %d bytes, got %d", MaxEventKeyBytes, len(m.Key))
	} else if !utf8.ValidString(m.Key) {
		add("key", "must be valid UTF-8")
	}
	if len(m.IdempotencyKey) > MaxIdemKeyBytes {
		add("idempotency_key", "must be at most %d bytes, got %d", MaxIdemKeyBytes, len(m.IdempotencyKey))
	} else if !utf8.ValidString(m.IdempotencyKey) {
		add("idempotency_key", "must be valid UTF-8")
	}
	if len(m.Headers) > MaxHeaders {
		add("headers", "must have at most %d entries, got %d", MaxHeaders, len(m.Headers))
	} else {
		// One problem names the field; sorted, so it is always the same one.
		for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
			if p := headerProblem(k, m.Headers[k]); p != "" {
				add("headers", "%s", p)
				break
			}
		}
	}
	if n := m.Size(); n > maxPayload {
		add("payload", "must be at most %d bytes (payload plus header names and values), got %d", maxPayload, n)
	}
	return ps
}

func headerProblem(k, v string) string {
	switch {
	case k == "":
		return "names must not be empty"
	case len(k) > MaxHeaderNameBytes:
		return fmt.Sprintf("names must be at most %d bytes, got %d", MaxHeaderNameBytes, len(k))
	case len(v) > MaxHeaderValBytes:
		return fmt.Sprintf("values must be at most %d bytes, got %d", MaxHeaderValBytes, len(v))
	case !utf8.ValidString(k) || !utf8.ValidString(v):
		return "names and values must be valid UTF-8"
	}
	return ""
}
