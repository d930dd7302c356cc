// Package deploy holds no code: its directory keeps the files that run
// the programs as services (systemd units in systemd/, a container image
// in Containerfile), and its test checks that every flag those files
// give to the programs is one the programs define.
package deploy
