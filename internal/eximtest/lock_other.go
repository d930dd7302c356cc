//go:build !unix

package eximtest

import "errors"

// lock is not supported here: Exim and its scripts need a Unix system.
func lock(string) (func(), error) {
	return nil, errors.New("eximtest: Exim's scripts need a Unix system")
}
