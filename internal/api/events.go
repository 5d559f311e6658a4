package api

import (
	"context"
	"errors"
	"log/slog"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// OutboxStatuser reports the outbox relay (internal/outbox) for
// GetOutboxStatus, and retries its refused rows for RetryOutboxRefused.
type OutboxStatuser interface {
	Status() events.OutboxStatus
	RetryRefused(ctx context.Context) (events.OutboxRetry, error)
}

// EventServer implements resiliencev1.EventServiceServer.
type EventServer struct {
	v1.UnimplementedEventServiceServer
	svc    *events.Service
	outbox OutboxStatuser
	log    *slog.Logger
	// stopping is cancelled when the sidecar shuts down: subscriptions end
	// with UNAVAILABLE/SHUTTING_DOWN.
	stopping context.Context
}

// NewEventServer serves svc; outbox may be nil (no outbox configured).
// Subscriptions open when stopping is cancelled end with UNAVAILABLE.
func NewEventServer(stopping context.Context, svc *events.Service, outbox OutboxStatuser, log *slog.Logger) *EventServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EventServer{svc: svc, outbox: outbox, log: log, stopping: stopping}
}

func (s *EventServer) fail(ctx context.Context, err error) error {
	if s.stopping.Err() != nil && errors.Is(err, context.Canceled) {
		err = errShuttingDown
	}
	// The service's own checks (for callers inside the sidecar) repeat
	// the edge's; should one trip anyway it is still a BadRequest.
	var fe *events.FieldError
	if errors.As(err, &fe) {
		var v violations
		v.add(fe.Field, "%s", fe.Msg)
		err = v.err()
	}
	return toStatus(ctx, s.log, err)
}

func (s *EventServer) withStopping(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.stopping, cancel)
	return ctx, func() { stop(); cancel() }
}

// topic checks a topic name; dead-letter topics only when deadOK.
func (v *violations) topic(field, name string, deadOK bool) {
	if !utf8.ValidString(name) {
		v.add(field, "must be valid UTF-8")
		return
	}
	p, dead := events.ValidTopicName(name)
	switch {
	case p != "":
		v.add(field, "%s", p)
	case dead && !deadOK:
		v.add(field, "must not be a dead-letter topic (\".dead\"): only the sidecar publishes there")
	}
}

// groupName checks a group or consumer name.
func (v *violations) groupName(field, name string) {
	if !utf8.ValidString(name) {
		v.add(field, "must be valid UTF-8")
		return
	}
	if p := events.ValidName(name); p != "" {
		v.add(field, "%s", p)
	}
}

func (v *violations) eventID(field, id string) {
	if !events.ValidEventID(id) {
		v.add(field, "must be an event id \"<ms>-<seq>\" as delivered")
	}
}

// ValidatePublish checks a PublishRequest against the payload limit and
// returns its message.
func ValidatePublish(r *v1.PublishRequest, maxPayloadBytes int) (events.Message, error) {
	var v violations
	v.topic("topic", r.GetTopic(), false)
	m := events.Message{Topic: r.GetTopic(), Key: r.GetKey(), Payload: r.GetPayload(), Headers: r.GetHeaders(), IdempotencyKey: r.GetIdempotencyKey()}
	for _, p := range events.MessageProblems(m, maxPayloadBytes) {
		v.add(p.Field, "%s", p.Msg)
	}
	return m, v.err()
}

// ValidateSubscribe checks a SubscribeRequest and returns its options
// (zero values for the service's defaults).
func ValidateSubscribe(r *v1.SubscribeRequest) (events.SubscribeOptions, error) {
	var v violations
	v.topic("topic", r.GetTopic(), true)
	v.groupName("group", r.GetGroup())
	v.groupName("consumer", r.GetConsumer())
	o := events.SubscribeOptions{Topic: r.GetTopic(), Group: r.GetGroup(), Consumer: r.GetConsumer()}
	if n := r.GetMaxInFlight(); n > events.MaxMaxInFlight {
		v.add("max_in_flight", "must be between 1 and %d (0 for %d), got %d", events.MaxMaxInFlight, events.DefaultMaxInFlight, n)
	} else {
		o.MaxInFlight = int(n)
	}
	o.Visibility = v.duration("visibility_timeout", r.GetVisibilityTimeout(), 0, events.MinVisibility, events.MaxVisibility)
	if n := r.GetMaxDeliveries(); n > events.MaxMaxDeliveries {
		v.add("max_deliveries", "must be between 1 and %d (0 for the configured default), got %d", events.MaxMaxDeliveries, n)
	} else {
		o.MaxDeliveries = int(n)
	}
	switch r.GetStartFrom() {
	case v1.StartFrom_START_FROM_UNSPECIFIED, v1.StartFrom_START_FROM_EARLIEST:
		o.Start = events.Earliest
	case v1.StartFrom_START_FROM_LATEST:
		o.Start = events.Latest
	default:
		v.add("start_from", "unknown value %d", int32(r.GetStartFrom()))
	}
	return o, v.err()
}

// ValidateAck checks an AckRequest.
func ValidateAck(r *v1.AckRequest) error {
	var v violations
	v.topic("topic", r.GetTopic(), true)
	v.groupName("group", r.GetGroup())
	v.eventID("event_id", r.GetEventId())
	return v.err()
}

// ValidateNack checks a NackRequest and returns its retry delay.
func ValidateNack(r *v1.NackRequest) (retryAfter time.Duration, err error) {
	var v violations
	v.topic("topic", r.GetTopic(), true)
	v.groupName("group", r.GetGroup())
	v.eventID("event_id", r.GetEventId())
	d := v.duration("retry_after", r.GetRetryAfter(), 0, 0, events.MaxRetryAfter)
	return d, v.err()
}

// Publish implements EventServiceServer.
func (s *EventServer) Publish(ctx context.Context, r *v1.PublishRequest) (*v1.PublishResponse, error) {
	m, err := ValidatePublish(r, s.svc.MaxPayloadBytes())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	p, err := s.svc.Publish(ctx, m)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.PublishResponse{EventId: p.EventID, Duplicate: p.Duplicate}, nil
}

// Subscribe implements EventServiceServer. The stream ends when the client
// cancels it (the events it was sent and did not ack are redelivered
// after their visibility timeout; those read for it but not sent, or whose
// send failed, are handed back to the group at once), when the sidecar
// shuts down (UNAVAILABLE/SHUTTING_DOWN) or when the store fails
// (UNAVAILABLE/STORE_UNAVAILABLE).
func (s *EventServer) Subscribe(r *v1.SubscribeRequest, stream v1.EventService_SubscribeServer) error {
	opts, err := ValidateSubscribe(r)
	if err != nil {
		return s.fail(stream.Context(), err)
	}
	ctx, done := s.withStopping(stream.Context())
	defer done()
	sub, err := s.svc.Subscribe(ctx, opts)
	if err != nil {
		return s.fail(stream.Context(), err)
	}
	defer sub.Close()
	if err := stream.Send(&v1.SubscribeResponse{Kind: &v1.SubscribeResponse_Subscribed{Subscribed: &v1.Subscribed{GroupCreated: sub.Created}}}); err != nil {
		return err
	}
	for {
		d, err := sub.Next(ctx)
		if err != nil {
			return s.fail(stream.Context(), err)
		}
		if err := stream.Send(&v1.SubscribeResponse{Kind: &v1.SubscribeResponse_Event{Event: EventPB(d)}}); err != nil {
			// The client never got it: sub.Close hands it back to the
			// group at once.
			sub.Unsent(d)
			return err
		}
	}
}

// EventPB converts a delivery.
func EventPB(d events.Delivery) *v1.Event {
	return &v1.Event{
		EventId: d.ID, Topic: d.Topic, Key: d.Key, Payload: d.Payload, Headers: d.Headers,
		PublishedAt: timestamppb.New(d.PublishedAt), DeliveryCount: uint32(d.Count), FirstDeliveredAt: timestamppb.New(d.FirstDeliveredAt),
		IdempotencyKey: d.IdempotencyKey,
	}
}

// Ack implements EventServiceServer.
func (s *EventServer) Ack(ctx context.Context, r *v1.AckRequest) (*v1.AckResponse, error) {
	if err := ValidateAck(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	ok, err := s.svc.Ack(ctx, r.GetTopic(), r.GetGroup(), r.GetEventId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.AckResponse{Acked: ok}, nil
}

// Nack implements EventServiceServer.
func (s *EventServer) Nack(ctx context.Context, r *v1.NackRequest) (*v1.NackResponse, error) {
	d, err := ValidateNack(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	ok, err := s.svc.Nack(ctx, r.GetTopic(), r.GetGroup(), r.GetEventId(), d)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.NackResponse{Requeued: ok}, nil
}

// GetOutboxStatus implements EventServiceServer.
func (s *EventServer) GetOutboxStatus(context.Context, *v1.GetOutboxStatusRequest) (*v1.GetOutboxStatusResponse, error) {
	if s.outbox == nil {
		return &v1.GetOutboxStatusResponse{}, nil
	}
	st := s.outbox.Status()
	if !st.Enabled {
		return &v1.GetOutboxStatusResponse{}, nil
	}
	resp := &v1.GetOutboxStatusResponse{
		Enabled: true, Healthy: st.Healthy, LastError: st.LastError, Active: st.Active,
		Backlog: st.Backlog, BacklogKnown: st.BacklogKnown,
		Lag: durationpb.New(st.Lag), Published: st.Published, Table: st.Table,
		Refused: st.Refused, LastRefused: st.LastRefused,
	}
	if st.Refused > 0 {
		resp.OldestRefusedAge = durationpb.New(st.OldestRefusedAge)
	}
	if !st.LastPublishedAt.IsZero() {
		resp.LastPublishedAt = timestamppb.New(st.LastPublishedAt)
	}
	return resp, nil
}

// RetryOutboxRefused implements EventServiceServer.
func (s *EventServer) RetryOutboxRefused(ctx context.Context, _ *v1.RetryOutboxRefusedRequest) (*v1.RetryOutboxRefusedResponse, error) {
	if s.outbox == nil || !s.outbox.Status().Enabled {
		return nil, status.Error(codes.FailedPrecondition, "no outbox relay is configured on this sidecar (config file section outbox)")
	}
	r, err := s.outbox.RetryRefused(ctx)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return nil, s.fail(ctx, err)
	default:
		// Postgres did not answer, or the relay lost the table meanwhile:
		// the cause (which names the database) stays in the log.
		s.log.WarnContext(ctx, "RetryOutboxRefused failed", "error", err)
		return nil, status.Error(codes.Unavailable, "the outbox relay could not retry its refused rows now (Postgres or the event store did not answer, or the relay lost the table); see GetOutboxStatus and retry")
	}
	return &v1.RetryOutboxRefusedResponse{Active: r.Active, Forwarded: r.Forwarded,
		Published: r.Published, StillRefused: r.Refused, Forgotten: r.Gone}, nil
}
