package httpapi

import (
	"fmt"
	"sort"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Route is one HTTP/JSON binding of a unary RPC, as its google.api.http
// annotation declares it.
type Route struct {
	// Method is the HTTP method (GET or POST).
	Method string
	// Pattern is the path template, e.g. "/v1/locks/{key=**}:acquire".
	Pattern string
	// Body is the annotation's body field: "*" (the request message is
	// the body) or "" (no body: every field not in the path is a query
	// parameter).
	Body string
	// RPC is the method it calls.
	RPC protoreflect.MethodDescriptor
}

// FullMethod is the gRPC name of the route's RPC ("/pkg.Service/Method").
func (r Route) FullMethod() string {
	return "/" + string(r.RPC.Parent().FullName()) + "/" + string(r.RPC.Name())
}

// String is "METHOD pattern", the route's metric label.
func (r Route) String() string { return r.Method + " " + r.Pattern }

// Routes returns the HTTP bindings of the named services' methods, looked
// up in files (nil: protoregistry.GlobalFiles), sorted by pattern then
// method. Methods without an annotation (the streams) have none.
func Routes(files *protoregistry.Files, services ...string) ([]Route, error) {
	if files == nil {
		files = protoregistry.GlobalFiles
	}
	var routes []Route
	for _, name := range services {
		d, err := files.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			return nil, fmt.Errorf("httpapi: service %s: %w", name, err)
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			return nil, fmt.Errorf("httpapi: %s is not a service", name)
		}
		for i := range sd.Methods().Len() {
			md := sd.Methods().Get(i)
			rule, ok := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
			if !ok || rule == nil {
				continue
			}
			for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
				method, pattern := ruleMethod(r)
				if method == "" {
					return nil, fmt.Errorf("httpapi: %s: unsupported google.api.http pattern", md.FullName())
				}
				routes = append(routes, Route{Method: method, Pattern: pattern, Body: r.GetBody(), RPC: md})
			}
		}
	}
	sort.Slice(routes, func(i, j int) bool {
		if routes[i].Pattern != routes[j].Pattern {
			return routes[i].Pattern < routes[j].Pattern
		}
		return routes[i].Method < routes[j].Method
	})
	return routes, nil
}

func ruleMethod(r *annotations.HttpRule) (method, pattern string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return "GET", p.Get
	case *annotations.HttpRule_Post:
		return "POST", p.Post
	case *annotations.HttpRule_Put:
		return "PUT", p.Put
	case *annotations.HttpRule_Delete:
		return "DELETE", p.Delete
	case *annotations.HttpRule_Patch:
		return "PATCH", p.Patch
	}
	return "", ""
}
