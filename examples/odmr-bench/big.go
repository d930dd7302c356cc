package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
)

// bigResult is what a child of the big-message figure reports.
type bigResult struct {
	Mem     memory
	Bytes   int64
	CRC     uint32
	Seconds float64
	Err     string
}

// bigMessage sends one *bigSize message through the whole ODMR path and
// through go-smtp, each side in its own process.
func bigMessage() ([]row, error) {
	size := strconv.FormatInt(*bigSize, 10)
	wantN, wantCRC := crcOf(newGenBody(*bigSize))

	type pair struct {
		server, client bigResult
	}
	run := func(serverRole, clientRole, mode string) (pair, error) {
		var p pair
		srv, err := startChild(serverRole, "-big", size, "-mode", mode)
		if err != nil {
			return p, err
		}
		defer srv.wait()
		addr, err := srv.expect("ADDR")
		if err != nil {
			return p, err
		}
		cli, err := startChild(clientRole, "-big", size, "-addr", addr, "-mode", mode)
		if err != nil {
			return p, err
		}
		if err := cli.result(&p.client); err != nil {
			return p, err
		}
		cli.wait()
		srv.in.Close()
		if err := srv.result(&p.server); err != nil {
			return p, err
		}
		for _, r := range []bigResult{p.client, p.server} {
			if r.Err != "" {
				return p, fmt.Errorf("%s", r.Err)
			}
		}
		return p, nil
	}
	base, err := run("big-gosmtp-server", "big-gosmtp-client", "")
	if err != nil {
		return nil, fmt.Errorf("go-smtp: %w", err)
	}
	if base.server.Bytes != wantN || base.server.CRC != wantCRC {
		return nil, fmt.Errorf("go-smtp server got %d bytes crc %08x, want %d %08x", base.server.Bytes, base.server.CRC, wantN, wantCRC)
	}
	var rows []row
	for _, mode := range []string{"DATA", "BDAT"} {
		o, err := run("big-provider", "big-customer", mode)
		if err != nil {
			return rows, fmt.Errorf("ODMR %s: %w", mode, err)
		}
		if o.client.Bytes != wantN || o.client.CRC != wantCRC {
			return rows, fmt.Errorf("ODMR %s: the customer got %d bytes crc %08x, want %d %08x", mode, o.client.Bytes, o.client.CRC, wantN, wantCRC)
		}
		// The customer's time runs from its connection to the end of the
		// session; the go-smtp client's from its connection to QUIT.
		or := float64(wantN) / o.client.Seconds / 1e6
		br := float64(wantN) / base.client.Seconds / 1e6
		label := fmt.Sprintf("%s message, pipelined %s", mib(*bigSize), mode)
		rows = append(rows,
			row{figure: label + ": throughput", odmr: fmt.Sprintf("%.0f MB/s", or), baseline: fmt.Sprintf("%.0f MB/s", br), ratio: or / br, note: "content verified by CRC-32C"},
			row{figure: label + ": peak RSS, provider (sender)", odmr: mib(o.server.Mem.VmHWM), baseline: mib(base.client.Mem.VmHWM), ratio: float64(o.server.Mem.VmHWM) / float64(base.client.Mem.VmHWM), note: "VmHWM; baseline: go-smtp client"},
			row{figure: label + ": peak RSS, customer (receiver)", odmr: mib(o.client.Mem.VmHWM), baseline: mib(base.server.Mem.VmHWM), ratio: float64(o.client.Mem.VmHWM) / float64(base.server.Mem.VmHWM), note: "VmHWM; baseline: go-smtp server"},
			row{figure: label + ": allocated, provider", odmr: mib(int64(o.server.Mem.TotalAlloc)), baseline: mib(int64(base.client.Mem.TotalAlloc)), ratio: float64(o.server.Mem.TotalAlloc) / float64(base.client.Mem.TotalAlloc), note: "runtime TotalAlloc"},
			row{figure: label + ": allocated, customer", odmr: mib(int64(o.client.Mem.TotalAlloc)), baseline: mib(int64(base.server.Mem.TotalAlloc)), ratio: float64(o.client.Mem.TotalAlloc) / float64(base.server.Mem.TotalAlloc), note: "runtime TotalAlloc"},
		)
	}
	return rows, nil
}

// genQueue holds one generated message.
func genQueue(size int64) *listQueue {
	q := newListQueue()
	q.add(odmr.Envelope{ID: "big", From: "sender@x.bench", To: []string{"big@" + benchDomain}, Size: size},
		func() io.Reader { return newGenBody(size) })
	return q
}

func bigProviderChild() error {
	chunking = *childMode == "BDAT"
	q := genQueue(*bigSize)
	p := newProvider(q)
	addr, err := serveProvider(p)
	if err != nil {
		return err
	}
	fmt.Printf("ADDR %s\n", addr)
	<-q.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx)
	r := bigResult{Mem: readMemory()}
	if res := q.msgs[0].res; len(res) != 1 || res[0].Err != nil {
		r.Err = fmt.Sprintf("delivery result %v", res)
	}
	printResult(r)
	return nil
}

func bigCustomerChild() error {
	sink := &crcSink{}
	c := newCustomer(*childAddr, sink)
	start := time.Now()
	res, err := c.Fetch(context.Background())
	r := bigResult{Seconds: time.Since(start).Seconds(), Bytes: sink.bytes, CRC: sink.crc, Mem: readMemory()}
	if err != nil {
		r.Err = err.Error()
	} else if res.Messages != 1 {
		r.Err = fmt.Sprintf("fetched %d messages", res.Messages)
	}
	printResult(r)
	return nil
}

func bigGoSMTPServerChild() error {
	b := &goSMTPBackend{sum: true, got: make(chan struct{}, 1)}
	srv, addr, err := serveGoSMTP(b)
	if err != nil {
		return err
	}
	fmt.Printf("ADDR %s\n", addr)
	<-b.got
	b.mu.Lock()
	r := bigResult{Bytes: b.bytes, CRC: b.crc}
	b.mu.Unlock()
	// Let the client quit before the server goes.
	readCommand(bufio.NewScanner(os.Stdin))
	srv.Close()
	r.Mem = readMemory()
	printResult(r)
	return nil
}

func bigGoSMTPClientChild() error {
	r := bigResult{}
	start := time.Now()
	err := func() error {
		c, err := smtp.Dial(*childAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Hello("client.bench"); err != nil {
			return err
		}
		if err := c.Mail("sender@x.bench", &smtp.MailOptions{Size: *bigSize}); err != nil {
			return err
		}
		if err := c.Rcpt("big@"+benchDomain, nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, newGenBody(*bigSize)); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		return c.Quit()
	}()
	r.Seconds = time.Since(start).Seconds()
	r.Mem = readMemory()
	if err != nil {
		r.Err = err.Error()
	}
	printResult(r)
	return nil
}
