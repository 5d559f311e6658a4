package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// PublishOption configures Publish.
type PublishOption func(*v1.PublishRequest)

// WithEventKey sets the event's key (an order id, say; up to 512 bytes),
// delivered with the event.
func WithEventKey(key string) PublishOption {
	return func(r *v1.PublishRequest) { r.Key = key }
}

// WithHeader adds a header delivered with the event (content type, trace
// context...): at most 64, names 1-256 bytes, values up to 8 KiB.
func WithHeader(name, value string) PublishOption {
	return func(r *v1.PublishRequest) {
		if r.Headers == nil {
			r.Headers = map[string]string{}
		}
		r.Headers[name] = value
	}
}

// WithIdempotencyKey makes retries of the publish append once (1-512
// bytes): a publish with a key published before (within the sidecar's
// events.dedup_retention, default 24h) returns the first event's id with
// duplicate set.
func WithIdempotencyKey(key string) PublishOption {
	return func(r *v1.PublishRequest) { r.IdempotencyKey = key }
}

// Publish appends an event with payload to topic and returns its id, and
// whether it was a duplicate: a retry of a publish with the same
// WithIdempotencyKey, which appended nothing and returns the first id.
// Errors are *Error: ErrInvalidArgument for a bad topic name or an
// oversized event, ErrTopicUnknown for a topic the sidecar's config does
// not declare, ErrStoreUnavailable when Redis does not answer.
func Publish(ctx context.Context, c v1.EventServiceClient, topic string, payload []byte, opts ...PublishOption) (eventID string, duplicate bool, err error) {
	r := &v1.PublishRequest{Topic: topic, Payload: payload}
	for _, o := range opts {
		o(r)
	}
	resp, err := c.Publish(ctx, r)
	if err != nil {
		return "", false, FromError(err)
	}
	return resp.GetEventId(), resp.GetDuplicate(), nil
}

// SubscribeOption configures Subscribe.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	req            v1.SubscribeRequest
	nackDelay      time.Duration
	confirmTimeout time.Duration
}

// WithConfirmTimeout bounds the wait for the sidecar's confirmation that
// the subscription is open (default DefaultCallTimeout): a stopped or
// frozen sidecar makes Subscribe return ErrDeadlineExceeded then, instead
// of waiting for ctx. Once open, the stream's HTTP/2 keepalive notices a
// sidecar that stops answering.
func WithConfirmTimeout(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.confirmTimeout = d }
}

// errNoConfirmation ends a stream whose confirmation did not come in time.
var errNoConfirmation = errors.New("resilience: no subscription confirmation in time")

// WithMaxInFlight bounds the events delivered to this consumer and not yet
// acked or nacked (1-1000; the sidecar's default is 16). Subscribe calls
// the handler for one event at a time, in delivery order; the others wait
// in the stream.
func WithMaxInFlight(n uint32) SubscribeOption {
	return func(o *subscribeOptions) { o.req.MaxInFlight = n }
}

// WithVisibilityTimeout sets how long a delivered event may stay unacked
// before the sidecar redelivers it (100ms-12h; default the sidecar's
// events.visibility_timeout, 30s). Choose it longer than the handler runs.
func WithVisibilityTimeout(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.req.VisibilityTimeout = durationpb.New(d) }
}

// WithMaxDeliveries sets how many deliveries an event gets before the
// sidecar moves it to the dead-letter topic "<topic>.dead" (1-1000;
// default the sidecar's events.max_deliveries, 10).
func WithMaxDeliveries(n uint32) SubscribeOption {
	return func(o *subscribeOptions) { o.req.MaxDeliveries = n }
}

// WithStartFrom sets where the group starts reading when this call creates
// it (default START_FROM_EARLIEST); an existing group keeps its position.
func WithStartFrom(s v1.StartFrom) SubscribeOption {
	return func(o *subscribeOptions) { o.req.StartFrom = s }
}

// WithNackDelay sets the delay before an event whose handler failed is
// redelivered (default 0: at once; at most 12h). A handler error made with
// RetryAfter sets its own.
func WithNackDelay(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.nackDelay = d }
}

// RetryAfter wraps a handler error so that Subscribe nacks the event with
// this redelivery delay instead of the WithNackDelay one.
func RetryAfter(err error, d time.Duration) error {
	return &retryAfterError{err: err, delay: d}
}

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("%v (retry after %v)", e.err, e.delay)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// Subscribe joins the consumer group of topic as consumer and calls handler
// for each event delivered to it, one at a time and in delivery order.
// When handler returns nil the event is acked; when it returns an error the
// event is nacked, and the sidecar redelivers it (to any consumer of the
// group) with its DeliveryCount increased, at once or after WithNackDelay
// or RetryAfter. After the group's max deliveries it goes to the
// dead-letter topic "<topic>.dead" instead. Delivery is at least once:
// make handler idempotent, keyed by the event's EventId (Idempotent does
// that).
//
// handler gets ctx, so cancelling ctx reaches a running handler too. The
// Ack or Nack of the event being handled is still sent after ctx ends
// (bounded by DefaultCallTimeout), so that a finished event is not
// delivered again.
//
// Subscribe returns when the subscription ends: nil when ctx was cancelled
// (events delivered and not yet handled are redelivered later); the
// sidecar's error when it refused the subscription (ErrInvalidArgument for
// a bad name, ErrTopicUnknown) or ended it (ErrShuttingDown when it stops);
// ErrDeadlineExceeded when it did not confirm the subscription within
// WithConfirmTimeout (a stopped or frozen sidecar);
// or the error of an Ack or Nack that failed. Run it again to resubscribe.
func Subscribe(ctx context.Context, c v1.EventServiceClient, topic, group, consumer string, handler func(ctx context.Context, ev *v1.Event) error, opts ...SubscribeOption) error {
	o := subscribeOptions{confirmTimeout: DefaultCallTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	req := &o.req
	req.Topic, req.Group, req.Consumer = topic, group, consumer

	streamCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Streams carry no default deadline: bound the confirmation here, so
	// that a frozen sidecar is an error, not a hang.
	confirm := time.AfterFunc(o.confirmTimeout, func() { cancel(errNoConfirmation) })
	stream, err := c.Subscribe(streamCtx, req)
	var first *v1.SubscribeResponse
	if err == nil {
		first, err = stream.Recv()
	}
	if fired := !confirm.Stop(); fired && ctx.Err() == nil {
		// Even a confirmation that arrived as the timer fired is on a
		// stream the timer is cancelling.
		return fmt.Errorf("resilience: no answer from the sidecar to Subscribe(%q) within %v (is it running? frozen?): %w", topic, o.confirmTimeout, ErrDeadlineExceeded)
	}
	if err != nil {
		return subscribeEnd(ctx, err)
	}
	if first.GetSubscribed() == nil {
		return fmt.Errorf("resilience: unexpected first message of the subscription to %q: %v", topic, first)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return subscribeEnd(ctx, err)
		}
		ev := m.GetEvent()
		if ev == nil {
			continue // a kind this client does not know
		}
		herr := handler(ctx, ev)
		// Settle the event even when ctx ended meanwhile.
		sctx, done := context.WithTimeout(context.WithoutCancel(ctx), DefaultCallTimeout)
		if herr == nil {
			_, err = c.Ack(sctx, &v1.AckRequest{Topic: topic, Group: group, EventId: ev.GetEventId()})
		} else {
			nack := &v1.NackRequest{Topic: topic, Group: group, EventId: ev.GetEventId()}
			delay := o.nackDelay
			var ra *retryAfterError
			if errors.As(herr, &ra) {
				delay = ra.delay
			}
			if delay > 0 {
				nack.RetryAfter = durationpb.New(delay)
			}
			_, err = c.Nack(sctx, nack)
		}
		done()
		if err != nil {
			what := "ack"
			if herr != nil {
				what = "nack"
			}
			return fmt.Errorf("resilience: %s event %s of topic %q: %w", what, ev.GetEventId(), topic, FromError(err))
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// subscribeEnd is Subscribe's result for the stream error err: nil when
// the caller's ctx ended, else the sidecar's error.
func subscribeEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	// ctx's deadline travels to the sidecar, whose timer may fire a moment
	// before ctx's own: that is still the caller's deadline ending it.
	if _, ok := ctx.Deadline(); ok && status.Code(err) == codes.DeadlineExceeded {
		<-ctx.Done()
		return nil
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("resilience: the sidecar ended the subscription stream: %w", err)
	}
	return FromError(err)
}
