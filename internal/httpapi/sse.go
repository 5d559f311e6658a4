package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	gproto "google.golang.org/protobuf/proto"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// subscribeVerb is the custom method of the Subscribe stream:
// GET /v1/topics/{topic=**}:subscribe?group=...&consumer=...
const subscribeVerb = "subscribe"

// subscribeRoute is its route label.
const subscribeRoute = "GET /v1/topics/{topic=**}:subscribe"

// subscribeTopic is the topic of a Subscribe request path (already
// through restPath), and whether the path is one.
func subscribeTopic(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/v1/topics/")
	if !ok {
		return "", false
	}
	topic, ok := strings.CutSuffix(rest, ":"+subscribeVerb)
	if !ok || topic == "" {
		return "", false
	}
	t, err := url.PathUnescape(topic)
	return t, err == nil
}

// subscribeRequest is the SubscribeRequest of topic and the query
// parameters (proto3 JSON names or proto names; values as in JSON:
// "30s", "START_FROM_EARLIEST", "10").
func subscribeRequest(topic string, q url.Values) (*v1.SubscribeRequest, error) {
	m := map[string]string{"topic": topic}
	for k, vs := range q {
		if k == "topic" || len(vs) == 0 {
			continue
		}
		m[k] = vs[len(vs)-1]
	}
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	for k, v := range m {
		if !first {
			b.WriteByte(',')
		}
		first = false
		b.WriteString(strconv.Quote(k) + ":" + strconv.Quote(v))
	}
	b.WriteByte('}')
	req := &v1.SubscribeRequest{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(b.Bytes(), req); err != nil {
		return nil, fmt.Errorf("invalid query: %s", strings.TrimSpace(strings.TrimPrefix(err.Error(), "proto:")))
	}
	return req, nil
}

// serveSubscribe serves Subscribe as server-sent events: the call is a
// gRPC call on the sidecar's own server (auth, max_subscriptions, metrics,
// logging, tracing as for any stream), each SubscribeResponse one event:
//
//	event: subscribed            data: {"groupCreated":true}
//	event: event  id: <event id> data: {"eventId":...,"payload":"<base64>",...}
//	event: error                 data: <google.rpc.Status>  (then the stream ends)
//
// Events are acknowledged with POST /v1/topics/{topic}:ack (or :nack).
// An error before the first event is a plain HTTP error response.
func (h *Handler) serveSubscribe(rec *recorder, r *http.Request, topic string) {
	req, err := subscribeRequest(topic, r.URL.Query())
	if err != nil {
		writeStatus(rec, &spb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}, 0)
		return
	}
	msg, err := gproto.Marshal(req)
	if err != nil {
		writeStatus(rec, &spb.Status{Code: int32(codes.Internal), Message: "internal error"}, 0)
		return
	}
	body := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	body = append(body, msg...)
	in, err := http.NewRequestWithContext(r.Context(), http.MethodPost, v1.EventService_Subscribe_FullMethodName, bytes.NewReader(body))
	if err != nil {
		writeStatus(rec, &spb.Status{Code: int32(codes.Internal), Message: "internal error"}, 0)
		return
	}
	in.Proto, in.ProtoMajor, in.ProtoMinor = "HTTP/2", 2, 0
	in.RemoteAddr = r.RemoteAddr
	in.Header.Set("Content-Type", "application/grpc")
	in.Header.Set("Te", "trailers")
	for _, k := range []string{"Authorization", "Traceparent", "Tracestate"} {
		if v := r.Header.Values(k); len(v) > 0 {
			in.Header[k] = v
		}
	}
	w := &sseWriter{out: rec, header: http.Header{}}
	h.grpc.ServeHTTP(w, in)
	w.finish()
}

// sseWriter receives the gRPC server's response to Subscribe and writes
// each message to out as a server-sent event, as it arrives.
type sseWriter struct {
	out     *recorder
	header  http.Header
	buf     []byte
	started bool // the event stream's headers are written
	failed  bool // a message did not decode: the stream is cut
}

func (w *sseWriter) Header() http.Header { return w.header }
func (w *sseWriter) WriteHeader(int)     {}
func (w *sseWriter) Flush()              {}

func (w *sseWriter) Write(p []byte) (int, error) {
	if w.failed {
		return 0, io.ErrClosedPipe
	}
	w.buf = append(w.buf, p...)
	for len(w.buf) >= 5 {
		n := int(binary.BigEndian.Uint32(w.buf[1:5]))
		if len(w.buf) < 5+n {
			break
		}
		var m v1.SubscribeResponse
		if err := gproto.Unmarshal(w.buf[5:5+n], &m); err != nil {
			w.failed = true
			w.event("error", "", statusJSON(&spb.Status{Code: int32(codes.Internal), Message: "internal error"}))
			return 0, io.ErrClosedPipe
		}
		w.buf = w.buf[5+n:]
		switch k := m.GetKind().(type) {
		case *v1.SubscribeResponse_Subscribed:
			w.event("subscribed", "", jsonOf(k.Subscribed))
		case *v1.SubscribeResponse_Event:
			w.event("event", k.Event.GetEventId(), jsonOf(k.Event))
		}
	}
	return len(p), nil
}

// event writes one server-sent event and flushes it to the client.
func (w *sseWriter) event(name, id string, data []byte) {
	if !w.started {
		w.started = true
		h := w.out.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		w.out.WriteHeader(http.StatusOK)
	}
	var b bytes.Buffer
	b.WriteString("event: " + name + "\n")
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("data: ")
	b.Write(data)
	b.WriteString("\n\n")
	_, _ = w.out.Write(b.Bytes())
	w.out.Flush()
}

// finish reports how the stream ended: an HTTP error when nothing was
// sent yet, else a last "error" event (none after a clean end).
func (w *sseWriter) finish() {
	st := w.status()
	if !w.started {
		if st.GetCode() == 0 {
			st = &spb.Status{Code: int32(codes.Internal), Message: "the stream ended before it began"}
		}
		writeStatus(w.out, st, 0)
		return
	}
	if st.GetCode() != 0 && !w.failed {
		w.event("error", "", statusJSON(st))
	}
}

// status is the gRPC status the server set in its trailers.
func (w *sseWriter) status() *spb.Status {
	if d := w.header.Get("Grpc-Status-Details-Bin"); d != "" {
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.StdEncoding} {
			if b, err := enc.DecodeString(d); err == nil {
				var st spb.Status
				if gproto.Unmarshal(b, &st) == nil {
					return &st
				}
			}
		}
	}
	code, err := strconv.Atoi(w.header.Get("Grpc-Status"))
	if err != nil {
		return &spb.Status{Code: int32(codes.Internal), Message: "internal error"}
	}
	msg, _ := url.PathUnescape(w.header.Get("Grpc-Message"))
	return &spb.Status{Code: int32(code), Message: msg}
}

func jsonOf(m gproto.Message) []byte {
	b, err := (protojson.MarshalOptions{EmitUnpopulated: true}).Marshal(m)
	if err != nil {
		return []byte("{}")
	}
	return compact(b)
}

func statusJSON(st *spb.Status) []byte {
	b, err := jsonOut.Marshal(st)
	if err != nil {
		b, _ = jsonOut.Marshal(&spb.Status{Code: st.GetCode(), Message: st.GetMessage()})
	}
	return compact(b)
}

// compact removes the spaces protojson may add: an SSE data line must be
// one line, and it keeps the output stable.
func compact(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}
