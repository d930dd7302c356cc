package accounts_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-odmr/odmr/accounts"
)

// An accounts file names each customer, its secret and its domains; the
// result serves a provider as both its Authenticator and its Authorizer.
func Example() {
	accts, err := accounts.Parse(strings.NewReader(`# NAME SECRET DOMAIN[,DOMAIN...]
alice s3cret example.org,bücher.example
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	domains, _ := accts.Domains(context.Background(), "alice")
	fmt.Println(domains)
	owner, _ := accts.Owner("xn--bcher-kva.example")
	fmt.Println(owner.Name)
	// Output:
	// [example.org xn--bcher-kva.example]
	// alice
}
