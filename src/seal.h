/* seal.h - a secret shown once and kept for replays, sealed: the answers kept on
 * Idempotency-Keys carry the secrets they showed (a subscription's access token, a checkout
 * session's client secret, a waiting-list token, a webhook signing secret), which the stores
 * otherwise keep only hashed. They are kept sealed with AES-256-GCM under a key derived from a
 * secret the store never sees (NUMATIX_ADMIN_TOKEN), so a copy of the database, a backup or a
 * replica gives no buyer's token away. */
#ifndef NUMATIX_SEAL_H
#define NUMATIX_SEAL_H

#define SEAL_KEY_LEN 32
/* The length of n bytes sealed. */
#define SEAL_LEN(n) (4 + 4 * (((n) + 28 + 2) / 3))

/* The sealing key derived from secret (HMAC-SHA256 of a fixed label). */
void seal_key(const char *secret, unsigned char key[SEAL_KEY_LEN]);
/* The sealed form of plain ("nx1." and base64 of nonce, ciphertext and tag), new. */
char *seal_text(const unsigned char key[SEAL_KEY_LEN], const char *plain);
/* Back: 0 with *plain new, or -1 when it was sealed under another key or is damaged. Text
 * kept before sealing (not "nx1.") comes back as it is. */
int seal_open(const unsigned char key[SEAL_KEY_LEN], const char *stored, char **plain);

#endif
