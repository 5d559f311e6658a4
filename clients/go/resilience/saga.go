package resilience

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Saga is a saga this process orchestrates through the sidecar's
// SagaService: record each step with its compensation before doing it,
// then Complete; when a step fails the sidecar undoes the recorded steps,
// newest first, by calling their compensations (HTTP calls on upstreams of
// the sidecar's config, sent with Idempotency-Key "<saga_id>:<step>").
// If this process dies instead, the sidecar compensates the saga after its
// timeout. A Saga is not safe for concurrent use: steps run one by one.
type Saga struct {
	client v1.SagaServiceClient
	// ID is the saga's id.
	ID string
}

// StartSaga starts the saga id (or resumes it: StartSaga is idempotent on
// id and name) with a timeout after which the sidecar compensates it unless
// it was completed (100ms-720h; 0 is the sidecar's default, 1h). An id
// taken by a saga of another name is an error matching
// ErrSagaStateConflict.
func StartSaga(ctx context.Context, c v1.SagaServiceClient, id, name string, timeout time.Duration) (*Saga, error) {
	r := &v1.StartSagaRequest{SagaId: id, Name: name}
	if timeout > 0 {
		r.Timeout = durationpb.New(timeout)
	}
	if _, err := c.StartSaga(ctx, r); err != nil {
		return nil, FromError(err)
	}
	return &Saga{client: c, ID: id}, nil
}

// Step records the step with its compensation (write-ahead: before the
// step is attempted), then runs do. When do fails, Step aborts the saga
// (the sidecar then compensates every recorded step, newest first, this
// one included: do may have done part of its work, so a compensation must
// succeed when there is nothing to undo) and returns do's error. When the
// sidecar refuses to record the step (the saga timed out or was aborted:
// ErrSagaStateConflict), do is not run. A step recorded again with the
// same compensation (a retry of Step) is recorded once.
func (s *Saga) Step(ctx context.Context, step string, compensation *v1.Compensation, do func(ctx context.Context) error) error {
	if err := s.AddCompensation(ctx, step, compensation); err != nil {
		return err
	}
	err := do(ctx)
	if err == nil {
		return nil
	}
	// Abort even when ctx is done: the saga must not wait for its timeout.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultCallTimeout)
	defer cancel()
	if aerr := s.Abort(actx, fmt.Sprintf("step %q failed: %v", step, err)); aerr != nil {
		return errors.Join(err, fmt.Errorf("resilience: abort saga %q: %w", s.ID, aerr))
	}
	return err
}

// AddCompensation records step with the HTTP call that undoes it, for
// work the caller does itself afterwards (Step does both): as Temporal's
// saga.AddCompensation, except that it comes before the work, so that a
// crash in the middle of it is compensated too. Do not do the work when
// it fails (ErrSagaStateConflict: the saga timed out or was aborted).
// Recording the same step with the same compensation again is a no-op.
func (s *Saga) AddCompensation(ctx context.Context, step string, compensation *v1.Compensation) error {
	_, err := s.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: s.ID, Step: step, Compensation: compensation})
	return FromError(err)
}

// Complete ends the saga successfully: nothing is compensated. An error
// matching ErrSagaStateConflict means the saga timed out or was aborted
// meanwhile, and is being (or was) compensated.
func (s *Saga) Complete(ctx context.Context) error {
	_, err := s.client.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: s.ID})
	return FromError(err)
}

// Abort makes the sidecar compensate the recorded steps, newest first, in
// the background (GetSaga shows the progress). reason is kept in the saga
// log (cut to 512 bytes, control characters replaced).
func (s *Saga) Abort(ctx context.Context, reason string) error {
	_, err := s.client.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: s.ID, Reason: sagaReason(reason)})
	return FromError(err)
}

// sagaReason makes reason acceptable to the sidecar: valid UTF-8 without
// control characters, at most 512 bytes.
func sagaReason(reason string) string {
	reason = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(reason, " "))
	if len(reason) <= 512 {
		return reason
	}
	cut := 512
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut]
}
