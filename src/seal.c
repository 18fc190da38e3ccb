/* seal.c - secrets kept for replays, sealed (seal.h). */
#include "seal.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define PREFIX "nx1."
#define NONCE_LEN 12
#define TAG_LEN 16

char *seal_text(const unsigned char key[SEAL_KEY_LEN], const char *plain)
{
	size_t n = strlen(plain), raw_len = NONCE_LEN + n + TAG_LEN;
	unsigned char *raw = xmalloc(raw_len);
	char *out = xmalloc(sizeof(PREFIX) + 4 * ((raw_len + 2) / 3));
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int len = 0, fin = 0;

	random_bytes(raw, NONCE_LEN);
	if (!c || !EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, raw) ||
	    !EVP_EncryptUpdate(c, raw + NONCE_LEN, &len, (const unsigned char *)plain, (int)n) ||
	    !EVP_EncryptFinal_ex(c, raw + NONCE_LEN + len, &fin) ||
	    !EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, raw + NONCE_LEN + n))
		abort();  /* AES-GCM with a valid key does not fail short of a broken libcrypto */
	EVP_CIPHER_CTX_free(c);
	memcpy(out, PREFIX, sizeof(PREFIX) - 1);
	EVP_EncodeBlock((unsigned char *)out + sizeof(PREFIX) - 1, raw, (int)raw_len);
	free(raw);
	return out;
}

int seal_open(const unsigned char key[SEAL_KEY_LEN], const char *stored, char **plain)
{
	size_t b64 = strlen(stored) - (sizeof(PREFIX) - 1);
	unsigned char *raw;
	EVP_CIPHER_CTX *c;
	int raw_len, len = 0, fin = 0, ok;

	if (strncmp(stored, PREFIX, sizeof(PREFIX) - 1)) {
		*plain = xstrdup(stored);  /* kept before answers were sealed */
		return 0;
	}
	raw = xmalloc(b64 / 4 * 3 + 1);
	raw_len = EVP_DecodeBlock(raw, (const unsigned char *)stored + sizeof(PREFIX) - 1, (int)b64);
	/* EVP_DecodeBlock counts the padding's zero bytes in */
	if (raw_len > 0 && b64 >= 1 && stored[strlen(stored) - 1] == '=')
		raw_len -= 1 + (b64 >= 2 && stored[strlen(stored) - 2] == '=');
	if (raw_len < NONCE_LEN + TAG_LEN) {
		free(raw);
		return -1;
	}
	int n = raw_len - NONCE_LEN - TAG_LEN;
	*plain = xmalloc((size_t)n + 1);
	c = EVP_CIPHER_CTX_new();
	ok = c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, raw) &&
	     EVP_DecryptUpdate(c, (unsigned char *)*plain, &len, raw + NONCE_LEN, n) &&
	     EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, raw + NONCE_LEN + n) &&
	     EVP_DecryptFinal_ex(c, (unsigned char *)*plain + len, &fin) > 0;
	EVP_CIPHER_CTX_free(c);
	free(raw);
	if (!ok) {
		free(*plain);
		*plain = NULL;
		return -1;
	}
	(*plain)[n] = '\0';
	return 0;
}

void seal_key(const char *secret, unsigned char key[SEAL_KEY_LEN])
{
	static const char label[] = "numatix: answers sealed at rest, v1";
	unsigned int len = SEAL_KEY_LEN;

	if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)label, sizeof(label) - 1, key, &len))
		abort();
}
