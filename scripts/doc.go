// Package scripts holds no code: its directory keeps shell scripts for
// developers and operators (stress-test, mx-demo), and its test checks
// that they parse and that every flag they give the programs is one the
// programs define, since no test runs mx-demo itself (it needs root and
// installs Postfix).
package scripts
