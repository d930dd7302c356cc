package odmrtest_test

import (
	"context"
	"fmt"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest"
)

// A plain program runs the customer suite with RunCustomer and a
// Reporter. Here the customer is this library's, with an in-memory sink;
// a Fetch hook that runs a program and maps its exit status reaches a
// customer written in any language the same way.
func ExampleRunCustomer() {
	cfg := odmrtest.NewCustomer(func(c *odmr.Customer) {
		c.Mechanisms = []string{odmr.CRAMMD5}
	})
	// Run only two checks here.
	for _, c := range odmrtest.CustomerChecks() {
		if id := c.ID(); id != "5.2.1/453-is-no-mail" && id != "5.3/receives-mail" {
			cfg.Skip = append(cfg.Skip, id)
		}
	}
	_, err := odmrtest.RunCustomer(context.Background(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		if r.Status != odmrtest.Skip {
			fmt.Println(r.Check.ID(), r.Check.Level, r.Status)
		}
	}))
	if err != nil {
		panic(err)
	}
	// Output:
	// 5.2.1/453-is-no-mail MUST PASS
	// 5.3/receives-mail MUST PASS
}

// A customer that an operator runs by hand has no report the suite can
// read: its Fetch hook waits for the session to end and reports
// OutcomeUnknown with what its sink received, and the checks judge what
// the customer did on the wire and what reached the sink. Here this
// library's customer stands for the operator's.
func ExampleOutcomeKind_unknown() {
	lib := odmrtest.NewCustomer()
	cfg := lib
	cfg.Fetch = func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
		out := lib.Fetch(ctx, addr)
		return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeUnknown, Detail: "run by hand", Messages: out.Messages}
	}
	for _, c := range odmrtest.CustomerChecks() {
		if id := c.ID(); id == "5.2.1/450-refused" || id == "5.3/receives-mail" {
			fmt.Println(id, c.RunCustomer(context.Background(), cfg).Status)
		}
	}
	// Output:
	// 5.2.1/450-refused PASS
	// 5.3/receives-mail PASS
}
