package idempotency_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// An HTTP endpoint that charges once per Idempotency-Key: the client's
// retry gets the first response again, marked Idempotent-Replayed.
func ExampleMiddleware() {
	conn, err := resilience.Dial() // the sidecar at SIDECAR_ADDR
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	charges := 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST /charges", func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge %d", charges)
	})
	handler := idempotency.Middleware(v1.NewIdempotencyServiceClient(conn))(mux)

	srv := httptest.NewServer(handler) // or http.ListenAndServe(addr, handler)
	defer srv.Close()

	key := rand.Text() // made by the client, once per charge it means to make
	for range 2 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/charges", strings.NewReader(`{"amount": 10}`))
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, string(body), "replayed:", resp.Header.Get("Idempotent-Replayed") == "true")
	}
	fmt.Println("charges made:", charges)
	// Output:
	// 201 charge 1 replayed: false
	// 201 charge 1 replayed: true
	// charges made: 1
}

// A gRPC server whose unary methods run once per idempotency-key metadata
// entry: here the standard health service stands for an application's.
func ExampleUnaryServerInterceptor() {
	conn, err := resilience.Dial() // the sidecar at SIDECAR_ADDR
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(
		idempotency.UnaryServerInterceptor(v1.NewIdempotencyServiceClient(conn)),
	))
	health := &healthApp{} // SERVING on its first run, NOT_SERVING after
	healthpb.RegisterHealthServer(srv, health)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()

	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", rand.Text())
	for range 2 {
		var header metadata.MD
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "orders"}, grpc.Header(&header))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(resp.GetStatus(), "replayed:", header.Get("idempotent-replayed"))
	}
	fmt.Println("runs:", health.runs.Load())
	// Output:
	// SERVING replayed: []
	// SERVING replayed: [true]
	// runs: 1
}
