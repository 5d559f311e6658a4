package httpapi

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The services' descriptors, registered in protoregistry.GlobalFiles.
	_ "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// OpenAPI returns the OpenAPI 3.0 document of routes, as indented JSON
// ending in a newline. It depends only on the routes' descriptors: the
// same protos give the same bytes (docs/openapi.json is this document for
// every service, and `make check-generated` checks it is fresh). Schemas
// follow the proto3 JSON mapping: lowerCamelCase names, 64-bit integers
// and bytes (base64) as strings, enums by name, Duration as "1.5s",
// Timestamp as RFC 3339.
func OpenAPI(routes []Route) ([]byte, error) {
	g := &openapiGen{schemas: map[string]any{}}
	paths := map[string]map[string]any{}
	for _, r := range routes {
		p, params := openapiPath(r.Pattern)
		if paths[p] == nil {
			paths[p] = map[string]any{}
		}
		paths[p][strings.ToLower(r.Method)] = g.operation(r, params)
		if r.RPC.Parent().FullName() == "resilience.v1.EventService" && paths["/v1/topics/{topic}:subscribe"] == nil {
			paths["/v1/topics/{topic}:subscribe"] = map[string]any{"get": g.subscribe(r.RPC.Parent().(protoreflect.ServiceDescriptor))}
		}
	}
	g.schemas["google.rpc.Status"] = map[string]any{
		"type":        "object",
		"description": "An error (google.rpc.Status): code is the gRPC code, details carry ErrorInfo (domain resilience.sidecar, reason), RetryInfo and BadRequest, each with its \"@type\".",
		"properties": map[string]any{
			"code":    map[string]any{"type": "integer", "format": "int32"},
			"message": map[string]any{"type": "string"},
			"details": map[string]any{"type": "array", "items": map[string]any{
				"type":                 "object",
				"properties":           map[string]any{"@type": map[string]any{"type": "string"}},
				"additionalProperties": true,
			}},
		},
	}
	doc := map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{
			"title":   "Resilience sidecar HTTP/JSON API",
			"version": "v1",
			"description": "Every unary RPC of the resilience sidecar's gRPC API (package resilience.v1) as HTTP/JSON, " +
				"served on --http-listen (default 127.0.0.1:50080). The semantics are the gRPC API's: see docs/http.md. " +
				"A path parameter declared {name=**} may contain '/'.",
		},
		"servers":  []any{map[string]any{"url": "http://127.0.0.1:50080"}},
		"security": []any{map[string]any{}, map[string]any{"bearerAuth": []any{}}},
		"paths":    paths,
		"components": map[string]any{
			"schemas": g.schemas,
			"securitySchemes": map[string]any{
				"bearerAuth": map[string]any{"type": "http", "scheme": "bearer", "description": "Required when the sidecar runs with api_token_file."},
			},
		},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("httpapi: openapi: %w", err)
	}
	return append(b, '\n'), nil
}

var pathVar = regexp.MustCompile(`\{([a-z_.]+)(=[^}]*)?\}`)

// openapiPath turns a google.api.http template into an OpenAPI path and
// its parameters (name -> whether it may span segments).
func openapiPath(pattern string) (string, []pathParam) {
	var params []pathParam
	p := pathVar.ReplaceAllStringFunc(pattern, func(m string) string {
		sub := pathVar.FindStringSubmatch(m)
		params = append(params, pathParam{field: sub[1], multi: strings.Contains(sub[2], "**")})
		return "{" + sub[1] + "}"
	})
	return p, params
}

type pathParam struct {
	field string
	multi bool
}

type openapiGen struct {
	schemas map[string]any
}

func (g *openapiGen) operation(r Route, params []pathParam) map[string]any {
	svc := r.RPC.Parent().(protoreflect.ServiceDescriptor)
	in := r.RPC.Input()
	op := map[string]any{
		"operationId": string(svc.Name()) + "_" + string(r.RPC.Name()),
		"tags":        []any{string(svc.Name())},
		"summary":     "gRPC " + r.FullMethod(),
		"responses": map[string]any{
			"200": map[string]any{"description": "OK", "content": jsonContent(g.ref(r.RPC.Output()))},
			"default": map[string]any{
				"description": "Error: google.rpc.Status JSON; HTTP status from the code (docs/http.md). 429 and 503 carry Retry-After when the status has RetryInfo.",
				"content":     jsonContent(map[string]any{"$ref": "#/components/schemas/google.rpc.Status"}),
			},
		},
	}
	inPath := map[string]bool{}
	var parameters []any
	for _, p := range params {
		inPath[p.field] = true
		desc := "URL-encoded (percent-encode '%', '?', '#' and non-ASCII)."
		if p.multi {
			desc = "May contain '/' (sent as is); otherwise URL-encoded (percent-encode '%', '?', '#', ':' and non-ASCII)."
		}
		parameters = append(parameters, map[string]any{
			"name": p.field, "in": "path", "required": true, "description": desc,
			"schema": map[string]any{"type": "string"},
		})
	}
	if r.Body == "" {
		fields := in.Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			if inPath[string(f.Name())] || f.Kind() == protoreflect.MessageKind && !isWKTScalar(f.Message()) || f.IsMap() {
				continue
			}
			parameters = append(parameters, map[string]any{
				"name": f.JSONName(), "in": "query", "schema": g.field(f),
			})
		}
	} else {
		op["requestBody"] = map[string]any{
			"required":    false,
			"description": "The request message as JSON; fields bound to the path are taken from the path.",
			"content":     jsonContent(g.ref(in)),
		}
	}
	if len(parameters) > 0 {
		op["parameters"] = parameters
	}
	return op
}

// subscribe is the operation of the Subscribe stream as server-sent events
// (sse.go), which has no annotation: a stream is not a REST route.
func (g *openapiGen) subscribe(svc protoreflect.ServiceDescriptor) map[string]any {
	md := svc.Methods().ByName("Subscribe")
	parameters := []any{map[string]any{"name": "topic", "in": "path", "required": true, "schema": map[string]any{"type": "string"}}}
	fields := md.Input().Fields()
	for i := range fields.Len() {
		if f := fields.Get(i); f.Name() != "topic" {
			parameters = append(parameters, map[string]any{"name": f.JSONName(), "in": "query", "schema": g.field(f)})
		}
	}
	g.ref(md.Output())
	return map[string]any{
		"operationId": "EventService_Subscribe",
		"tags":        []any{string(svc.Name())},
		"summary":     "gRPC /resilience.v1.EventService/Subscribe as server-sent events",
		"description": "One event per SubscribeResponse: \"event: subscribed\" (data: Subscribed), \"event: event\" with \"id: <event id>\" (data: Event), and \"event: error\" (data: google.rpc.Status) before the stream ends on an error. Acknowledge with POST /v1/topics/{topic}:ack or :nack. An error before the first event is a plain JSON error response.",
		"parameters":  parameters,
		"responses": map[string]any{
			"200": map[string]any{"description": "text/event-stream of SubscribeResponse members as JSON", "content": map[string]any{"text/event-stream": map[string]any{"schema": map[string]any{"type": "string"}}}},
			"default": map[string]any{
				"description": "Error before the stream began: google.rpc.Status JSON.",
				"content":     jsonContent(map[string]any{"$ref": "#/components/schemas/google.rpc.Status"}),
			},
		},
	}
}

func jsonContent(schema any) map[string]any {
	return map[string]any{"application/json": map[string]any{"schema": schema}}
}

func isWKTScalar(m protoreflect.MessageDescriptor) bool {
	switch m.FullName() {
	case "google.protobuf.Duration", "google.protobuf.Timestamp":
		return true
	}
	return false
}

// ref is a reference to m's schema, which it defines once.
func (g *openapiGen) ref(m protoreflect.MessageDescriptor) map[string]any {
	switch m.FullName() {
	case "google.protobuf.Duration":
		return map[string]any{"type": "string", "format": "duration", "description": "proto3 JSON Duration: seconds with an 's' suffix, e.g. \"1.5s\"."}
	case "google.protobuf.Timestamp":
		return map[string]any{"type": "string", "format": "date-time"}
	}
	name := string(m.FullName())
	if _, ok := g.schemas[name]; !ok {
		g.schemas[name] = nil // placeholder against recursion
		props := map[string]any{}
		fields := m.Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			s := g.field(f)
			if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
				s = withDescription(s, "Member of oneof "+string(o.Name())+": at most one is set.")
			}
			props[f.JSONName()] = s
		}
		g.schemas[name] = map[string]any{"type": "object", "properties": props}
	}
	return map[string]any{"$ref": "#/components/schemas/" + name}
}

func withDescription(s map[string]any, d string) map[string]any {
	if _, isRef := s["$ref"]; isRef {
		return map[string]any{"allOf": []any{s}, "description": d}
	}
	out := map[string]any{"description": d}
	for k, v := range s {
		out[k] = v
	}
	return out
}

// field is the schema of one field's JSON value.
func (g *openapiGen) field(f protoreflect.FieldDescriptor) map[string]any {
	if f.IsMap() {
		return map[string]any{"type": "object", "additionalProperties": g.single(f.MapValue())}
	}
	if f.IsList() {
		return map[string]any{"type": "array", "items": g.single(f)}
	}
	return g.single(f)
}

func (g *openapiGen) single(f protoreflect.FieldDescriptor) map[string]any {
	switch f.Kind() {
	case protoreflect.BoolKind:
		return map[string]any{"type": "boolean"}
	case protoreflect.StringKind:
		return map[string]any{"type": "string"}
	case protoreflect.BytesKind:
		return map[string]any{"type": "string", "format": "byte"}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return map[string]any{"type": "integer", "format": "int32"}
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return map[string]any{"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return map[string]any{"type": "string", "format": "int64"}
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return map[string]any{"type": "string", "format": "uint64"}
	case protoreflect.DoubleKind:
		return map[string]any{"type": "number", "format": "double"}
	case protoreflect.FloatKind:
		return map[string]any{"type": "number", "format": "float"}
	case protoreflect.EnumKind:
		name := string(f.Enum().FullName())
		if _, ok := g.schemas[name]; !ok {
			var values []any
			for i := range f.Enum().Values().Len() {
				values = append(values, string(f.Enum().Values().Get(i).Name()))
			}
			g.schemas[name] = map[string]any{"type": "string", "enum": values}
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	default: // message, group
		return g.ref(f.Message())
	}
}

// Document is the OpenAPI document of every service of package
// resilience.v1: docs/openapi.json, and what a sidecar serving all of
// them answers at GET /openapi.json.
func Document() ([]byte, error) {
	routes, err := Routes(nil, Services()...)
	if err != nil {
		return nil, err
	}
	return OpenAPI(routes)
}

// Services are the full names of package resilience.v1's services, sorted.
func Services() []string {
	var names []string
	protoregistry.GlobalFiles.RangeFilesByPackage("resilience.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			names = append(names, string(f.Services().Get(i).FullName()))
		}
		return true
	})
	sort.Strings(names)
	return names
}
