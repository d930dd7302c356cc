package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/memqueue"
)

// sessionRate runs *nSessions short sessions from *workers parallel
// clients against each server.
func sessionRate() ([]row, error) {
	q := &memqueue.Queue{}
	p := newProvider(q)
	addr, err := serveProvider(p)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	odmrRate, err := parallel(*nSessions, *workers, func() error {
		res, err := newCustomer(addr, &countSink{}).Fetch(context.Background())
		if err == nil && !res.NoMail {
			err = fmt.Errorf("the provider had mail")
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ODMR: %w", err)
	}

	srv, gaddr, err := serveGoSMTP(&goSMTPBackend{})
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	baseRate, err := parallel(*nSessions, *workers, func() error {
		c, err := smtp.Dial(gaddr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Hello("client.bench"); err != nil {
			return err
		}
		if err := c.Auth(sasl.NewPlainClient("", benchUser, benchSecret)); err != nil {
			return err
		}
		return c.Quit()
	})
	if err != nil {
		return nil, fmt.Errorf("go-smtp: %w", err)
	}
	return []row{{
		figure:   fmt.Sprintf("sessions, %d clients: ODMR connect+EHLO+AUTH CRAM-MD5+ATRN(453)+QUIT; go-smtp connect+EHLO+AUTH PLAIN+QUIT", *workers),
		odmr:     fmt.Sprintf("%.0f sessions/s", odmrRate),
		baseline: fmt.Sprintf("%.0f sessions/s", baseRate),
		ratio:    odmrRate / baseRate,
		note:     fmt.Sprintf("%d sessions each; ODMR's client is odmr.Customer, go-smtp's its Client", *nSessions),
	}}, nil
}

// parallel runs f n times from w goroutines and returns the rate.
func parallel(n, w int, f func() error) (float64, error) {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := f(); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return 0, *e
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
