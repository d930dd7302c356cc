package lograte

import (
	"sync"
	"testing"
	"time"
)

// TestLimiter: N records a second go through, the rest are counted and
// reported by the next one let through.
func TestLimiter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := &Limiter{N: 2}
	for i, want := range []struct {
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0}, {100 * time.Millisecond, true, 0},
		{200 * time.Millisecond, false, 0}, {999 * time.Millisecond, false, 0},
		{time.Second, true, 2}, {1500 * time.Millisecond, true, 0}, {1600 * time.Millisecond, false, 0},
		{5 * time.Second, true, 1},
	} {
		ok, s := l.Allow(t0.Add(want.at))
		if ok != want.ok || s != want.suppressed {
			t.Errorf("%d: Allow(+%v) = %v, %d; want %v, %d", i, want.at, ok, s, want.ok, want.suppressed)
		}
	}
}

// TestLimiterZeroAndNegative: the zero Limiter lets one record a second
// through; a negative N, all of them.
func TestLimiterZeroAndNegative(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var zero Limiter
	if ok, _ := zero.Allow(t0); !ok {
		t.Error("the zero Limiter held back the first record")
	}
	if ok, _ := zero.Allow(t0.Add(time.Millisecond)); ok {
		t.Error("the zero Limiter let a second record through in one second")
	}
	if ok, s := zero.Allow(t0.Add(time.Second)); !ok || s != 1 {
		t.Errorf("after a second: %v, %d; want true, 1", ok, s)
	}
	l := &Limiter{N: -1}
	for i := range 100 {
		if ok, s := l.Allow(t0); !ok || s != 0 {
			t.Fatalf("record %d held back with no cap", i)
		}
	}
}

// TestLimiterConcurrent: concurrent callers let exactly N through in
// one window, and the rest are all counted.
func TestLimiterConcurrent(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := &Limiter{N: 10}
	var mu sync.Mutex
	let := 0
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if ok, _ := l.Allow(t0); ok {
				mu.Lock()
				let++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if let != 10 {
		t.Errorf("%d let through, want 10", let)
	}
	if ok, s := l.Allow(t0.Add(time.Second)); !ok || s != 90 {
		t.Errorf("next window: %v, %d; want true, 90", ok, s)
	}
}
