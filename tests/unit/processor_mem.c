/* processor_mem.c - the in-memory payment processor of the unit tests. */
#include "processor_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "util.h"

#define MAXPAY 256

struct mem_payment {
	char key[128];
	struct pay_result r;
	bool was_authorized;
};

struct mem_refund {
	char key[160];
	int64_t amount;
	char id[64];
};

struct procmem {
	struct processor base;
	struct mem_payment pays[MAXPAY];
	int npays;
	struct mem_refund refunds[MAXPAY];
	int nrefunds;
	const char *fail;
	bool fail_after;
};

#define PM(p) ((struct procmem *)(p))

static struct mem_payment *find(struct procmem *m, const char *key, bool by_id)
{
	for (int i = 0; i < m->npays; i++)
		if (!strcmp(by_id ? m->pays[i].r.id : m->pays[i].key, key))
			return &m->pays[i];
	return NULL;
}

static struct mem_payment *add(struct procmem *m, const char *key, enum pay_state state, int64_t amount)
{
	struct mem_payment *p = &m->pays[m->npays++];

	memset(p, 0, sizeof(*p));
	snprintf(p->key, sizeof(p->key), "%s", key);
	id_new_prefixed("pay_", p->r.id, sizeof(p->r.id));
	p->r.state = state;
	p->r.amount_cents = amount;
	p->was_authorized = state == PAYS_AUTHORIZED || state == PAYS_CAPTURED;
	return p;
}

/* 1: fail before the work; 2: after it; 0: do not fail. */
static int failing(struct procmem *m, const char *op)
{
	if (!m->fail || strcmp(m->fail, op))
		return 0;
	m->fail = NULL;
	return m->fail_after ? 2 : 1;
}

static enum pay_outcome answer(int fail, const struct mem_payment *p, enum pay_outcome o, struct pay_result *out)
{
	memset(out, 0, sizeof(*out));
	if (p)
		*out = p->r;
	if (fail) {
		snprintf(out->msg, sizeof(out->msg), "injected: the answer was lost");
		return out->outcome = PAY_UNKNOWN;
	}
	return out->outcome = o;
}

static enum pay_outcome mem_pay(struct processor *pr, const struct pay_req *r, bool capture, const char *op,
				struct pay_result *out)
{
	struct procmem *m = PM(pr);
	int fail = failing(m, op);
	struct mem_payment *p = find(m, r->key, false);
	const char *decline = processor_test_decline(r->method, r->off_session);

	if (fail == 1)
		return answer(fail, NULL, PAY_UNKNOWN, out);
	if (!p) {
		p = add(m, r->key, decline ? PAYS_DECLINED : capture ? PAYS_CAPTURED : PAYS_AUTHORIZED, r->amount_cents);
		snprintf(p->r.decline_code, sizeof(p->r.decline_code), "%s", decline ? decline : "");
	}
	return answer(fail, p, p->r.state == PAYS_DECLINED ? PAY_DECLINED : PAY_OK, out);
}

static enum pay_outcome mem_authorize(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	return mem_pay(p, r, false, "authorize", out);
}

static enum pay_outcome mem_charge_saved(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	return mem_pay(p, r, true, "charge_saved", out);
}

static enum pay_outcome mem_capture(struct processor *pr, const struct pay_ref *ref, struct pay_result *out)
{
	const char *key = ref->key;
	struct procmem *m = PM(pr);
	int fail = failing(m, "capture");
	struct mem_payment *p = find(m, key, false);

	if (fail == 1)
		return answer(fail, NULL, PAY_UNKNOWN, out);
	if (!p || (p->r.state != PAYS_AUTHORIZED && p->r.state != PAYS_CAPTURED))
		return answer(fail, p, PAY_INVALID, out);
	p->r.state = PAYS_CAPTURED;
	return answer(fail, p, PAY_OK, out);
}

static enum pay_outcome mem_cancel(struct processor *pr, const struct pay_ref *ref, struct pay_result *out)
{
	const char *key = ref->key;
	struct procmem *m = PM(pr);
	int fail = failing(m, "cancel");
	struct mem_payment *p = find(m, key, false);

	if (fail == 1)
		return answer(fail, NULL, PAY_UNKNOWN, out);
	if (!p)
		p = add(m, key, PAYS_VOIDED, 0);
	if (p->r.state == PAYS_CAPTURED)
		return answer(fail, p, PAY_INVALID, out);
	if (p->r.state == PAYS_AUTHORIZED)
		p->r.state = PAYS_VOIDED;
	return answer(fail, p, PAY_OK, out);
}

static enum pay_outcome mem_refund(struct processor *pr, const char *payment_id, const char *refund_key,
				   int64_t max_cents, struct pay_result *out)
{
	struct procmem *m = PM(pr);
	int fail = failing(m, "refund");
	struct mem_payment *p = find(m, payment_id, true);
	enum pay_outcome o;

	if (fail == 1)
		return answer(fail, NULL, PAY_UNKNOWN, out);
	for (int i = 0; i < m->nrefunds; i++)
		if (!strcmp(m->refunds[i].key, refund_key)) {
			o = answer(fail, p, PAY_OK, out);
			out->refunded_cents = m->refunds[i].amount;
			snprintf(out->refund_id, sizeof(out->refund_id), "%s", m->refunds[i].id);
			return o;
		}
	if (!p || p->r.state != PAYS_CAPTURED)
		return answer(fail, p, PAY_INVALID, out);
	int64_t left = p->r.amount_cents - p->r.refunded_cents, amount = max_cents < left ? max_cents : left;
	struct mem_refund *rf = &m->refunds[m->nrefunds++];
	snprintf(rf->key, sizeof(rf->key), "%s", refund_key);
	id_new_prefixed("re_", rf->id, sizeof(rf->id));
	rf->amount = amount;
	p->r.refunded_cents += amount;
	o = answer(fail, p, PAY_OK, out);
	out->refunded_cents = amount;
	snprintf(out->refund_id, sizeof(out->refund_id), "%s", rf->id);
	return o;
}

static enum pay_outcome mem_lookup(struct processor *pr, const struct pay_ref *ref, struct pay_result *out)
{
	struct procmem *m = PM(pr);

	return answer(0, find(m, ref->key, false), PAY_OK, out);
}

static void mem_close(struct processor *p)
{
	free(p);
}

static const struct processor_ops mem_ops = {
	.name = "mem",
	.authorize = mem_authorize,
	.charge_saved = mem_charge_saved,
	.capture = mem_capture,
	.cancel = mem_cancel,
	.refund = mem_refund,
	.lookup = mem_lookup,
	.close = mem_close,
};

struct processor *procmem_new(void)
{
	struct procmem *m = xcalloc(1, sizeof(*m));

	m->base.ops = &mem_ops;
	return &m->base;
}

void procmem_free(struct processor *p)
{
	if (p)
		p->ops->close(p);
}

void procmem_fail_next(struct processor *p, const char *op, bool after)
{
	PM(p)->fail = op;
	PM(p)->fail_after = after;
}

static int count(struct processor *p, enum pay_state state)
{
	int n = 0;

	for (int i = 0; i < PM(p)->npays; i++)
		n += PM(p)->pays[i].r.state == state && (state != PAYS_VOIDED || PM(p)->pays[i].r.amount_cents);
	return n;
}

int procmem_authorized(struct processor *p)
{
	int n = 0;

	for (int i = 0; i < PM(p)->npays; i++)
		n += PM(p)->pays[i].was_authorized;
	return n;
}

int procmem_captured(struct processor *p)
{
	return count(p, PAYS_CAPTURED);
}

int procmem_voided(struct processor *p)
{
	return count(p, PAYS_VOIDED);
}

int64_t procmem_refunded_cents(struct processor *p)
{
	int64_t n = 0;

	for (int i = 0; i < PM(p)->nrefunds; i++)
		n += PM(p)->refunds[i].amount;
	return n;
}

enum pay_state procmem_state(struct processor *p, const char *key)
{
	struct mem_payment *m = find(PM(p), key, false);

	return m ? m->r.state : PAYS_NONE;
}
