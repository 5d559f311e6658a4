package resilience_test

import (
	"context"
	"fmt"
	"log"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// chatMessage is an application message that carries a Lamport stamp.
type chatMessage struct {
	Text  string
	Stamp uint64
}

// Stamp what you send, observe what you receive: the stamps then order
// messages causally across every replica and every system that plays along.
func ExampleLamportClock() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	clocks := v1.NewClockServiceClient(conn)

	// One clock per chat room; the room is named by a ULID from the
	// sidecar (sortable by creation time, unique).
	ids, err := clocks.NextUlid(ctx, &v1.NextUlidRequest{})
	if err != nil {
		log.Fatal(err)
	}
	room := ids.GetUlids()[0].GetValue()
	clock := resilience.NewLamportClock(clocks, "chat/"+room)

	// Sending: stamp the message.
	stamp, err := clock.Stamp(ctx)
	if err != nil {
		log.Fatal(err)
	}
	out := chatMessage{Text: "hello", Stamp: stamp}
	fmt.Println("sent", out.Text, "at", out.Stamp)

	// Receiving a message from a system whose clock is ahead: the clock
	// moves past its stamp.
	in := chatMessage{Text: "hi back", Stamp: 41}
	at, err := clock.Observe(ctx, in.Stamp)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("received", in.Text, "stamped", in.Stamp, "at", at)

	// A batch of replies stamped in one call.
	first, last, err := clock.Reserve(ctx, 3)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("batch stamped", first, "to", last)
	// Output:
	// sent hello at 1
	// received hi back stamped 41 at 42
	// batch stamped 43 to 45
}
