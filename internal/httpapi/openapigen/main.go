// Command openapigen writes the OpenAPI 3 document of the sidecar's
// HTTP/JSON API (every annotated RPC of package resilience.v1) to the
// file named by -o, as `make generate` does for docs/openapi.json. The
// sidecar serves the same document at GET /openapi.json.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/seed-a88e5317/resilience-sidecar/internal/httpapi"
)

func main() {
	out := flag.String("o", "docs/openapi.json", "file to write")
	flag.Parse()
	doc, err := httpapi.Document()
	if err == nil {
		err = os.WriteFile(*out, doc, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "openapigen:", err)
		os.Exit(1)
	}
}
