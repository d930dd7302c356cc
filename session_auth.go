package odmr

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// mechanisms lists the SASL mechanisms offered on this connection.
func (s *session) mechanisms() []string {
	var m []string
	if !s.p.DisableSCRAM {
		m = append(m, SCRAMSHA256, SCRAMSHA1)
	}
	if !s.p.DisableCRAMMD5 {
		m = append(m, CRAMMD5)
	}
	if s.isTLS || s.p.AllowInsecureAuth {
		m = append(m, sasl.Plain, sasl.Login)
	}
	if s.p.ExternalAuth != nil && s.isTLS {
		if cs := s.conn.(*tls.Conn).ConnectionState(); len(cs.VerifiedChains) > 0 {
			m = append(m, sasl.External)
		}
	}
	return m
}

func (s *session) handleAuth(ctx context.Context, arg string) error {
	if s.helo == "" {
		return s.fail(errBadSequence.withMessage("Send EHLO first"))
	}
	if s.identity != "" {
		return s.fail(errBadSequence.withMessage("Already authenticated"))
	}
	if s.p.RequireTLS && !s.isTLS {
		return s.fail(errTLSRequired)
	}
	if wait := s.p.authFails.blocked(remoteHost(s.raw.RemoteAddr()), time.Now()); wait > 0 {
		s.log.Info("odmr: AUTH refused while the address is locked out", "wait", wait.Round(time.Second))
		return s.fail(errAuthLocked(wait))
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if mech == "" {
		return s.fail(errBadArguments.withMessage("AUTH requires a mechanism"))
	}
	offered := false
	for _, m := range s.mechanisms() {
		offered = offered || m == mech
	}
	if !offered {
		if (mech == sasl.Plain || mech == sasl.Login) && !s.isTLS {
			return s.fail(errEncryptionReq)
		}
		return s.fail(errUnknownMech)
	}

	var user string
	srv := s.saslServer(ctx, mech, &user)
	var resp []byte
	if hasIR {
		ir = strings.TrimSpace(ir)
		switch ir {
		case "*":
			return s.fail(errAuthCancelled)
		case "=":
			resp = []byte{}
		default:
			b, err := base64.StdEncoding.DecodeString(ir)
			if err != nil {
				return s.fail(errBadBase64)
			}
			resp = b
		}
	}
	s.inSASL = true
	defer func() { s.inSASL = false }()
	for {
		chal, done, err := srv.Next(resp)
		if err == nil && done && user != "" {
			if wait := s.p.authFails.blocked("user:"+user, time.Now()); wait > 0 {
				// Even right credentials wait out a lockout, or the
				// lockout would tell a guesser when it got them right.
				s.log.Info("odmr: AUTH refused while the identity is locked out", "user", user, "wait", wait.Round(time.Second))
				return s.fail(errAuthLocked(wait))
			}
		}
		if err != nil {
			return s.authFailed(mech, user, err)
		}
		if done {
			// A success clears the identity's count and the address's: an
			// address shared by many users (a NAT) is not locked out by
			// their typos, and guessing at other accounts from it still
			// meets those accounts' own lockout.
			s.p.authFails.succeed("user:" + user)
			s.p.authFails.succeed(remoteHost(s.raw.RemoteAddr()))
			s.identity = user
			s.state.Store(int32(StateAuthenticated))
			s.log = s.log.With("identity", user)
			s.log.Info("odmr: authenticated", "mechanism", mech)
			return s.replyLine(235, "2.7.0 Authentication successful")
		}
		if err := s.replyLine(334, base64.StdEncoding.EncodeToString(chal)); err != nil {
			return err
		}
		line, err := s.readLine(maxSASLLine)
		var e *Error
		if errors.As(err, &e) {
			return s.fail(e)
		} else if err != nil {
			return s.readFailed(ctx, err)
		}
		if line == "*" {
			return s.fail(errAuthCancelled)
		}
		resp, err = base64.StdEncoding.DecodeString(line)
		if err != nil {
			return s.fail(errBadBase64)
		}
	}
}

// errTempAuth marks a credential store failure.
type errTempAuth struct{ err error }

func (e errTempAuth) Error() string { return "odmr: credential lookup failed: " + e.err.Error() }

func (e errTempAuth) Unwrap() error { return e.err }

// secret looks a user up, separating unknown users from store failures.
func (s *session) secret(ctx context.Context, user string) ([]byte, error) {
	sec, err := s.p.Authenticator.Secret(ctx, user)
	if err != nil && !errors.Is(err, ErrUnknownUser) && !errors.Is(err, ErrNoSecret) {
		return nil, errTempAuth{err}
	}
	return sec, err
}

// scramCredentials returns the user's SCRAM credentials from the store, or
// derives them from the shared secret. An unknown user gets made-up
// credentials, stable per user, so that the exchange fails only at the
// proof and does not tell which users exist.
func (s *session) scramCredentials(ctx context.Context, mech, user string) (SCRAMCredentials, error) {
	if sa, ok := s.p.Authenticator.(SCRAMAuthenticator); ok {
		c, err := sa.SCRAMCredentials(ctx, mech, user)
		switch {
		case err == nil:
			return c, nil
		case errors.Is(err, ErrUnknownUser):
			return fakeSCRAM(mech, user), nil
		case !errors.Is(err, ErrNoSecret):
			return c, errTempAuth{err}
		}
	}
	sec, err := s.secret(ctx, user)
	switch {
	case errors.Is(err, ErrUnknownUser), errors.Is(err, ErrNoSecret):
		return fakeSCRAM(mech, user), nil
	case err != nil:
		return SCRAMCredentials{}, err
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	return deriveSCRAM(mech, user, string(sec), salt, DefaultSCRAMIterations)
}

func (s *session) checkPassword(ctx context.Context, user, password string) error {
	sec, err := s.secret(ctx, user)
	if errors.Is(err, ErrNoSecret) {
		if sa, ok := s.p.Authenticator.(SCRAMAuthenticator); ok {
			for _, mech := range []string{SCRAMSHA256, SCRAMSHA1} {
				c, err := sa.SCRAMCredentials(ctx, mech, user)
				if err == nil {
					if checkSCRAMPassword(c, user, password) {
						return nil
					}
					return ErrAuthFailed
				}
			}
		}
		return ErrAuthFailed
	}
	if errors.Is(err, ErrUnknownUser) {
		equalSecret(password, []byte("odmr-unknown-user-placeholder"))
		return ErrAuthFailed
	} else if err != nil {
		return err
	}
	if !equalSecret(password, sec) {
		return ErrAuthFailed
	}
	return nil
}

func (s *session) saslServer(ctx context.Context, mech string, user *string) sasl.Server {
	switch mech {
	case CRAMMD5:
		srv := NewCRAMMD5Server(s.p.hostname(), func(u string) ([]byte, error) {
			*user = u
			return s.secret(ctx, u)
		}).(*cramMD5Server)
		if s.p.challenge != nil {
			srv.challenge = s.p.challenge(s.p.hostname())
		}
		return srv
	case sasl.Plain:
		return sasl.NewPlainServer(func(authz, u, pass string) error {
			*user = u
			if authz != "" && authz != u {
				return ErrAuthFailed
			}
			return s.checkPassword(ctx, u, pass)
		})
	case sasl.Login:
		return &loginServer{check: func(u, pass string) error {
			*user = u
			return s.checkPassword(ctx, u, pass)
		}}
	case SCRAMSHA256, SCRAMSHA1:
		srv, err := newSCRAMServer(mech, user, func(u string) (SCRAMCredentials, error) {
			return s.scramCredentials(ctx, mech, u)
		})
		if err != nil {
			panic(err) // the mechanism names are this package's own
		}
		return srv
	case sasl.External:
		return sasl.NewExternalServer(func(authz string) error {
			id, err := s.p.ExternalAuth(ctx, s.conn.(*tls.Conn).ConnectionState())
			if err != nil {
				return fmt.Errorf("%w: %v", ErrAuthFailed, err)
			}
			*user = id
			if authz != "" && authz != id {
				return ErrAuthFailed
			}
			return nil
		})
	}
	panic("odmr: unexpected mechanism " + mech)
}

func (s *session) authFailed(mech, user string, err error) error {
	var temp errTempAuth
	if errors.As(err, &temp) {
		s.log.Warn("odmr: credential store failed", "mechanism", mech, "user", user, "err", temp.err)
		return s.fail(&Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"})
	}
	s.authFailures++
	now := time.Now()
	s.p.authFails.fail(remoteHost(s.raw.RemoteAddr()), now)
	if user != "" {
		s.p.authFails.fail("user:"+user, now)
	}
	s.log.Info("odmr: authentication failed", "mechanism", mech, "user", user, "failures", s.authFailures)
	if s.authFailures > orDefault(s.p.MaxAuthFailures, DefaultMaxAuthFailures) {
		s.reply(errTooManyAuth)
		return errors.New("odmr: too many failed authentication attempts")
	}
	return s.fail(ErrAuthFailed)
}

func errAuthLocked(wait time.Duration) *Error {
	return &Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("Too many failed authentication attempts; try again in %v", wait.Round(time.Second)+time.Second)}
}
