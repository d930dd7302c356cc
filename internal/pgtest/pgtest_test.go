package pgtest_test

import (
	"context"
	"testing"

	"github.com/go-odmr/odmr/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestDSN checks that two tests get two databases, each empty and usable.
func TestDSN(t *testing.T) {
	a, b := pgtest.DSN(t), pgtest.DSN(t)
	if a == b {
		t.Fatalf("two calls gave one database: %s", a)
	}
	ctx := context.Background()
	for _, dsn := range []string{a, b} {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE x (a int)"); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	}
	t.Logf("PostgreSQL started in %v", pgtest.StartTime())
}
