package redisx

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// CheckURL reports why rawURL is not a Redis URL of mode as NewClient reads
// it (go-redis's ParseURL, ParseClusterURL or ParseFailoverURL; Sentinel
// also needs ?master_name=...), or nil. Its message never contains the
// URL's password: a URL net/url cannot parse is described without any
// quoted part of it, and the secrets of one that parses are scrubbed from
// go-redis's message.
func CheckURL(rawURL string, mode Mode) error {
	var err error
	switch mode {
	case Standalone:
		_, err = redis.ParseURL(rawURL)
	case Cluster:
		_, err = redis.ParseClusterURL(rawURL)
	case Sentinel:
		var o *redis.FailoverOptions
		if o, err = redis.ParseFailoverURL(rawURL); err == nil && o.MasterName == "" {
			//lint:ignore ST1005 the message ends with the URL parameter to add, as users type it
			return errors.New("redis_mode sentinel needs the master name in the URL: ?master_name=...")
		}
	default:
		return fmt.Errorf("unknown redis_mode %s", field.Quote(string(mode)))
	}
	if err == nil {
		return nil
	}
	var msg string
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		msg = "malformed URL: " + field.DropQuoted(ue.Err.Error())
	} else {
		msg = err.Error()
		for _, s := range urlSecrets(rawURL) {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	// The cause is deliberately not wrapped: it may quote the password.
	return fmt.Errorf("not a valid %s Redis URL: %s", mode, msg)
}

// urlSecrets returns the password of rawURL's user info and the values of
// its query parameters whose name contains "password", as written and
// escaped.
func urlSecrets(rawURL string) []string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	var s []string
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			s = append(s, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	for k, vs := range u.Query() {
		if strings.Contains(strings.ToLower(k), "password") {
			for _, v := range vs {
				if v != "" {
					s = append(s, v, url.QueryEscape(v))
				}
			}
		}
	}
	return s
}
