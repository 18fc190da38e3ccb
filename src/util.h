/* util.h - allocation that aborts on exhaustion, time, randomness and hashing helpers. */
#ifndef NUMATIX_UTIL_H
#define NUMATIX_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Out of memory aborts here, so callers' error paths handle only real errors. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);                 /* NULL stays NULL; new, free() */
char *xstrndup(const char *s, size_t n);       /* new, free() */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* new, free() */

int64_t now_ms(void);                          /* wall clock, milliseconds since the epoch */
int64_t mono_us(void);                         /* the monotonic clock, microseconds: for durations */
/* "<host>:<pid>": who holds a lease in the store (the reaper's, the webhook sender's). */
void lease_holder(char out[96]);
/* The same name for another process of this host. */
void lease_holder_of(pid_t pid, char out[96]);
/* RFC 3339 UTC with milliseconds into buf (at least 25 bytes). Returns buf. */
char *time_format(int64_t ms, char *buf, size_t len);

void random_bytes(void *buf, size_t n);        /* getrandom(2); aborts if the kernel refuses */
void hex_encode(const unsigned char *in, size_t n, char *out); /* out: 2n+1 bytes */
/* SHA-256 of data as 64 lowercase hex digits + NUL into out[65]. */
void sha256_hex(const void *data, size_t n, char out[65]);
/* Constant-time comparison of two secrets of any length. */
bool secret_equal(const char *a, const char *b);

#endif
