/* mail_render.h - a mail of the outbox as a message: its kind's templates (src/mail/<kind>.txt,
 * whose first line is the subject, and <kind>.html, built into the binary) filled with the values
 * of its data, its customer and its plan, each escaped for where it goes (nothing in HTML, no
 * line break in a subject). */
#ifndef NUMATIX_MAIL_RENDER_H
#define NUMATIX_MAIL_RENDER_H

#include <json-c/json.h>

#include "err.h"
#include "model.h"

struct mail_message {
	char *subject;   /* UTF-8, one line */
	char *text;      /* the plain text part, CRLF line ends */
	char *html;      /* the HTML part, CRLF line ends */
};
void mail_message_clear(struct mail_message *m);

/* The values a mail's templates show, each a string: its data with amounts and times written out
 * (in the plan's time zone), the customer's name, the plan's name, and a link to the page where
 * the customer signs in to see it (public_url/account.html#...), or with login_token (a login
 * link's, unsealed from its row; else NULL) the link that signs in. New: json_object_put. */
struct json_object *mail_values(const struct mail *m, const struct customer *c, const char *plan_name,
				const char *public_url, const char *currency, const char *login_token);

/* Fills out from the templates of kind; -1 (e filled) when kind has none, or a template names a
 * value vars lacks. */
int mail_render(const char *kind, struct json_object *vars, struct mail_message *out, struct err *e);

#endif
