package odmr

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/saslmech"
	"github.com/go-odmr/odmr/odmrtrace"
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
	// An authenticated session has said EHLO: the order of the first two
	// checks shows only in the reply to AUTH before EHLO.
	if e := s.checkState(errAuthenticated, StateInitial); e != nil {
		return e
	}
	if s.helo == "" {
		return errEHLOFirst
	}
	if s.p.RequireTLS && !s.isTLS {
		return errTLSRequired
	}
	if wait := s.p.authLimits.blocked(s.netKey, time.Now()); wait > 0 {
		s.logAuth(slog.LevelInfo, "odmr: AUTH refused while the address is penalised", "wait", wait.Round(time.Second))
		s.observeAuth("", "", odmrtrace.AuthRateLimited)
		return errAuthLocked.withArgs(wait.Round(time.Second) + time.Second)
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if mech == "" {
		return errNoMechanism
	}
	offered := false
	for _, m := range s.mechanisms() {
		offered = offered || m == mech
	}
	if !offered {
		if (mech == sasl.Plain || mech == sasl.Login) && !s.isTLS {
			return errEncryptionReq
		}
		return errUnknownMech
	}

	var user string
	s.ticket = authTicket{}
	// The credential store's lookups end at the authentication deadline
	// too, or at the session's when AuthTimeout is negative: a store that
	// hangs (a database that stopped answering) must not keep an
	// unauthenticated session, and its goroutine, past either.
	end := s.sessionDeadline()
	if a := s.authDeadline(); !a.IsZero() && a.Before(end) {
		end = a
	}
	lookupCtx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	srv := s.saslServer(lookupCtx, mech, &user)
	return s.saslExchange(ctx, mech, srv, &user, ir, hasIR)
}

// saslExchange runs the SASL exchange of AUTH mech with srv, from the
// initial response ir when the command had one, and returns the result
// for the session to write. *user is the name the mechanism saw, which
// srv sets.
func (s *session) saslExchange(ctx context.Context, mech string, srv sasl.Server, user *string, ir string, hasIR bool) error {
	var resp []byte
	if hasIR {
		ir = strings.TrimSpace(ir)
		switch ir {
		case "*":
			return s.authFailed(mech, *user, errAuthCancelled)
		case "=":
			resp = []byte{}
		default:
			b, err := base64.StdEncoding.DecodeString(ir)
			if err != nil {
				return errBadBase64
			}
			resp = b
		}
	}
	s.inSASL = true
	defer func() { s.inSASL = false }()
	for {
		chal, done, err := srv.Next(resp)
		if err != nil {
			return s.authFailed(mech, *user, err)
		}
		if done {
			if !s.p.promote(s) {
				// Closed to make room while the secret was checked:
				// answered as a wrong secret would be (see authFailed).
				return s.authFailed(mech, *user, ErrAuthFailed)
			}
			// The source's failures stay: a login to an account of one's
			// own must not buy more guesses at another's.
			s.p.authLimits.succeed(s.netKey, *user, s.ticket, time.Now())
			s.identity = *user
			s.state.Store(int32(StateAuthenticated))
			s.log = s.log.With("identity", loggedName(*user))
			s.log.Info("odmr: authenticated", "mechanism", mech)
			s.observeAuth(mech, *user, odmrtrace.AuthSuccess)
			return s.replyLine(235, replyAuthOK)
		}
		if err := s.replyLine(334, base64.StdEncoding.EncodeToString(chal)); err != nil {
			s.countAuthFailure(mech, *user, "abandoned", odmrtrace.AuthFailure)
			return err
		}
		line, err := s.readLine(maxSASLLine)
		if e, ok := err.(*Error); ok {
			return s.authFailed(mech, *user, e)
		} else if err != nil {
			// A dropped connection or a timeout mid-exchange counts as
			// a failure, or guessers would abandon each wrong guess.
			s.countAuthFailure(mech, *user, "abandoned", odmrtrace.AuthFailure)
			return s.readFailed(ctx, err)
		}
		if line == "*" {
			return s.authFailed(mech, *user, errAuthCancelled)
		}
		resp, err = base64.StdEncoding.DecodeString(line)
		if err != nil {
			return s.authFailed(mech, *user, errBadBase64)
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
// derives them from the shared secret with a salt stable per user (see
// Provider.SCRAMSaltKey). An unknown user gets credentials derived the
// same way, that no proof matches: the exchange fails only at the proof,
// with nothing in the salt, iteration count or timing to tell which users
// exist.
func (s *session) scramCredentials(ctx context.Context, mech, user string) (SCRAMCredentials, error) {
	if sa, ok := s.p.Authenticator.(SCRAMAuthenticator); ok {
		c, err := sa.SCRAMCredentials(ctx, mech, user)
		switch {
		case err == nil:
			return c, nil
		case errors.Is(err, ErrUnknownUser):
			return s.p.scramKeys.unknown(mech, user)
		case !errors.Is(err, ErrNoSecret):
			return c, errTempAuth{err}
		}
	}
	sec, err := s.secret(ctx, user)
	switch {
	case errors.Is(err, ErrUnknownUser), errors.Is(err, ErrNoSecret):
		return s.p.scramKeys.unknown(mech, user)
	case err != nil:
		return SCRAMCredentials{}, err
	}
	return s.p.scramKeys.derive(mech, user, sec)
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
		srv := saslmech.NewCRAMMD5Server(s.p.hostname(), func(u string) ([]byte, error) {
			*user = u
			if err := s.admit(u); err != nil {
				return nil, err
			}
			return s.secret(ctx, u)
		}, ErrUnknownUser, ErrAuthFailed)
		if s.p.challenge != nil {
			srv.Challenge = s.p.challenge(s.p.hostname())
		}
		return srv
	case sasl.Plain:
		return sasl.NewPlainServer(func(authz, u, pass string) error {
			*user = u
			if err := s.admit(u); err != nil {
				return err
			}
			if authz != "" && authz != u {
				return ErrAuthFailed
			}
			return s.checkPassword(ctx, u, pass)
		})
	case sasl.Login:
		return &loginServer{check: func(u, pass string) error {
			*user = u
			if err := s.admit(u); err != nil {
				return err
			}
			return s.checkPassword(ctx, u, pass)
		}}
	case SCRAMSHA256, SCRAMSHA1:
		srv, err := newSCRAMServer(mech, user, func(u string) (SCRAMCredentials, error) {
			if err := s.admit(u); err != nil {
				return SCRAMCredentials{}, err
			}
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

// authFailed returns the result of an AUTH exchange that ended without
// success. Every such ending but a credential store failure counts
// against the session and the source: wrong secrets, cancelled and
// malformed exchanges, and attempts refused because the identity had no
// guesses left.
func (s *session) authFailed(mech, user string, err error) error {
	var temp errTempAuth
	if errors.As(err, &temp) {
		s.logAuth(slog.LevelWarn, "odmr: credential store failed", "mechanism", mech, "identity", loggedName(user), "err", temp.err)
		s.observeAuth(mech, user, odmrtrace.AuthTempFail)
		return errTempAuthFailed
	}
	reply := ErrAuthFailed
	why := "failed"
	result := odmrtrace.AuthFailure
	var e *Error
	switch {
	case errors.As(err, &e) && e == errAuthThrottled:
		reply, why = errAuthThrottled, "refused: too many guesses at this identity"
		result = odmrtrace.AuthRateLimited
	case errors.As(err, &e) && e.Code != ErrAuthFailed.Code:
		reply, why = e, strings.ToLower(e.Message)
	case mech == CRAMMD5 && errors.Is(err, ErrNoSecret):
		// Only the log says so: the reply is the one for a wrong
		// secret, but the operator learns why the customer cannot get in.
		why = "failed: no CRAM-MD5 secret stored for this account"
	}
	if s.countAuthFailure(mech, user, why, result) || s.evicted.Load() {
		if s.evicted.Load() {
			// Right and wrong secrets alike: a guesser who evicts its
			// own session mid-AUTH learns nothing from the reply.
			return &closing{errGaveWay, errors.New("odmr: unauthenticated session closed to make room for others")}
		}
		return &closing{errTooManyAuth, errors.New("odmr: too many failed authentication attempts")}
	}
	return reply
}

// countAuthFailure counts a failed attempt, logs it with why and reports
// it to the Trace as result, and reports whether the session has had too
// many. Only attempts that named a user count against the source: the
// others guessed nothing and cost next to nothing.
func (s *session) countAuthFailure(mech, user, why string, result odmrtrace.AuthResult) bool {
	s.authFailures++
	if user != "" {
		s.p.authLimits.fail(s.netKey, user, time.Now())
	}
	s.logAuth(slog.LevelWarn, "odmr: authentication "+why, "mechanism", mech, "identity", loggedName(user), "failures", s.authFailures)
	s.observeAuth(mech, user, result)
	return s.authFailures > orDefault(s.p.MaxAuthFailures, defaults.MaxAuthFailures)
}

// logAuth writes a record about AUTH unless too many were written in the
// last second, so that a flood of guesses does not flood the log.
func (s *session) logAuth(level slog.Level, msg string, args ...any) {
	ok, suppressed := s.p.authLogs.Allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Log(context.Background(), level, msg, args...)
}

// admit asks the limiter whether user may be tried from this session's
// source. It runs before the secret is looked at.
func (s *session) admit(user string) error {
	t, ok := s.p.authLimits.admit(s.netKey, user, time.Now())
	if !ok {
		return errAuthThrottled
	}
	s.ticket = t
	return nil
}
