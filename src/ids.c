/* ids.c - resource ids, Idempotency-Keys and secret tokens. */
#include "ids.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uuid.h>

#include "util.h"

void id_new(char out[ID_LEN + 1])
{
	unsigned char raw[12];
	uint32_t secs = (uint32_t)time(NULL);

	raw[0] = (unsigned char)(secs >> 24);
	raw[1] = (unsigned char)(secs >> 16);
	raw[2] = (unsigned char)(secs >> 8);
	raw[3] = (unsigned char)secs;
	random_bytes(raw + 4, 8);
	hex_encode(raw, sizeof(raw), out);
}

void id_new_prefixed(const char *prefix, char *out, size_t len)
{
	char id[ID_LEN + 1];

	id_new(id);
	snprintf(out, len, "%s%s", prefix, id);
}

bool id_valid(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (i >= ID_LEN || !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return i == ID_LEN;
}

bool uuid_valid(const char *s)
{
	uuid_t u;

	/* uuid_parse accepts exactly the 36-character hyphenated form. */
	return strlen(s) == UUID_LEN && uuid_parse(s, u) == 0;
}

void uuid_new(char out[UUID_LEN + 1])
{
	uuid_t u;

	uuid_generate_random(u);
	uuid_unparse_lower(u, out);
}

static void bearer_new(const char *prefix, const char *sub_id, char out[TOKEN_LEN + 1])
{
	static const char b64url[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	unsigned char raw[43];
	size_t head = 4 + ID_LEN + 1;

	random_bytes(raw, sizeof(raw));
	snprintf(out, head + 1, "%s%s_", prefix, sub_id);
	for (size_t i = 0; i < sizeof(raw); i++)
		out[head + i] = b64url[raw[i] & 63];
	out[TOKEN_LEN] = '\0';
}

void token_new(const char *sub_id, char out[TOKEN_LEN + 1])
{
	bearer_new("sat_", sub_id, out);
}

void secret_new(const char *session_id, char out[TOKEN_LEN + 1])
{
	bearer_new("cst_", session_id, out);
}

static bool bearer_names(const char *prefix, const char *token, char out[ID_LEN + 1])
{
	if (strlen(token) != TOKEN_LEN || strncmp(token, prefix, 4) || token[4 + ID_LEN] != '_')
		return false;
	memcpy(out, token + 4, ID_LEN);
	out[ID_LEN] = '\0';
	return id_valid(out);
}

bool token_subscription(const char *token, char out[ID_LEN + 1])
{
	return bearer_names("sat_", token, out);
}

bool secret_session(const char *secret, char out[ID_LEN + 1])
{
	return bearer_names("cst_", secret, out);
}

void entry_token_new(const char *entry_id, char out[TOKEN_LEN + 1])
{
	bearer_new("wlt_", entry_id, out);
}

bool token_entry(const char *token, char out[ID_LEN + 1])
{
	return bearer_names("wlt_", token, out);
}

void link_token_new(const char *link_id, char out[TOKEN_LEN + 1])
{
	bearer_new("lnk_", link_id, out);
}

bool token_link(const char *token, char out[ID_LEN + 1])
{
	return bearer_names("lnk_", token, out);
}

void session_token_new(const char *session_id, char out[TOKEN_LEN + 1])
{
	bearer_new("cse_", session_id, out);
}

bool token_customer_session(const char *token, char out[ID_LEN + 1])
{
	return bearer_names("cse_", token, out);
}

bool trace_id_valid(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++) {
		char c = s[i];
		if (i >= 64 || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
				 (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return i > 0;
}
