package pipeline

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"net/textproto"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dotWriterOutput is what net/textproto's DotWriter (go-smtp's client
// sends bodies with it) makes of body written in the given pieces.
func dotWriterOutput(t testing.TB, pieces [][]byte) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	w := textproto.NewWriter(bw).DotWriter()
	for _, p := range pieces {
		_, err := w.Write(p)
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	return out.Bytes()
}

// unstuff turns DotWriter output into the BDAT form of the same body:
// the final dot goes and each line-leading dot loses its escape.
func unstuff(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte(".\r\n"))
	var out []byte
	start := true
	for _, c := range b {
		if start && c == '.' {
			start = false
			continue
		}
		start = c == '\n'
		out = append(out, c)
	}
	return out
}

func encode(pieces [][]byte, stuff bool) []byte {
	var out bytes.Buffer
	e := encoder{stuff: stuff}
	for _, p := range pieces {
		e.encode(&out, p)
	}
	out.Write(e.tail())
	return out.Bytes()
}

func TestEncoderMatchesTextprotoDotWriter(t *testing.T) {
	cases := []struct {
		name, in string
	}{
		{"empty body: textproto sends an empty line", ""},
		{"ordinary CRLF text", "Subject: x\r\n\r\nhello\r\n"},
		{"no final line break", "abc"},
		{"leading dot at the very start", ".hidden\r\n"},
		{"dots at line starts", "a\r\n.\r\n..\r\n.x\r\n"},
		{"a lone dot line is not the end", "\r\n.\r\n"},
		{"bare LF becomes CRLF", "a\nb\n.c\n"},
		{"bare CR passes", "a\rb\r\n"},
		{"CR CR LF: textproto's CR state alternates", "a\r\r\nb"},
		{"CR CR CR LF", "\r\r\r\n.x"},
		{"ends with CR", "abc\r"},
		{"ends with CR CR", "abc\r\r"},
		{"8-bit bytes pass untouched", "caf\xc3\xa9 \xff\xfe\x00\x80\r\n"},
		{"LF first", "\n.\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := [][]byte{[]byte(c.in)}
			want := dotWriterOutput(t, in)
			assert.Equal(t, string(want), string(encode(in, true)))
			assert.Equal(t, string(unstuff(want)), string(encode(in, false)))
			// Fed one byte at a time, the state carries across writes.
			var bytewise [][]byte
			for i := range len(c.in) {
				bytewise = append(bytewise, []byte{c.in[i]})
			}
			assert.Equal(t, string(want), string(encode(bytewise, true)))
		})
	}
}

func TestEncoderRandomSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("\r\n.a\xe9")
	for range 5000 {
		n := rng.IntN(40)
		in := make([]byte, n)
		for i := range in {
			in[i] = alphabet[rng.IntN(len(alphabet))]
		}
		var pieces [][]byte
		for rest := in; len(rest) > 0; {
			k := 1 + rng.IntN(len(rest))
			pieces = append(pieces, rest[:k])
			rest = rest[k:]
		}
		want := dotWriterOutput(t, [][]byte{in})
		require.Equal(t, string(want), string(encode(pieces, true)), "input %q split %q", in, pieces)
		require.Equal(t, string(unstuff(want)), string(encode(pieces, false)), "input %q", in)
	}
}

func FuzzEncoder(f *testing.F) {
	f.Add([]byte("a\r\n.b\r\n"), uint8(3))
	f.Add([]byte("\r\r\n\n.\r"), uint8(1))
	f.Add([]byte(""), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		var pieces [][]byte
		if k := int(split); k > 0 && k < len(in) {
			pieces = [][]byte{in[:k], in[k:]}
		} else {
			pieces = [][]byte{in}
		}
		want := dotWriterOutput(t, [][]byte{in})
		if got := encode(pieces, true); !bytes.Equal(got, want) {
			t.Fatalf("DATA encoding of %q: got %q, want %q", in, got, want)
		}
		if got := encode(pieces, false); !bytes.Equal(got, unstuff(want)) {
			t.Fatalf("BDAT encoding of %q: got %q, want %q", in, got, unstuff(want))
		}
	})
}

func BenchmarkEncoder(b *testing.B) {
	line := []byte("The quick brown fox jumps over the lazy dog, again and again, 0123456789\r\n")
	body := bytes.Repeat(line, 32<<10/len(line))
	body = append(body, ".dot line\r\n"...)
	var e encoder
	e.stuff = true
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		e.encode(discard{}, body)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
