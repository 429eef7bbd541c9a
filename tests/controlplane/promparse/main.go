// Command promparse reads the Prometheus text exposition format on stdin with the
// parser Prometheus itself uses (github.com/prometheus/common/expfmt) and prints one
// line per metric family: its name, its type and how many series it has. On input the
// parser rejects it prints the parser's error and exits 1. The integration tests pipe
// drover's and drover-extender's /metrics through it.
package main

import (
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func main() {
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "promparse:", err)
		os.Exit(1)
	}
	names := make([]string, 0, len(families))
	for n := range families {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := families[n]
		fmt.Printf("%s %s %d\n", n, f.GetType(), len(f.GetMetric()))
	}
}
