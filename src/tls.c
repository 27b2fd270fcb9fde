/*
 * tls: server-side TLS contexts (see tls.h).
 *
 * Policy: TLS 1.2 at least (configurable to 1.3), the configured TLS 1.2
 * cipher list and TLS 1.3 suites, server preference, no compression, no
 * renegotiation, tickets on (OpenSSL's key rotates per context; a reload
 * starts a new one).  The SNI callback switches the SSL to the context
 * whose name matches the client's server name (exact, case-insensitive,
 * or "*.example.org" for one label); others get the default certificate.
 *
 * Threads: see tls.h.
 */
#include "tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TLS_SNI_MAX 64
#define TLS_NAME_MAX 256

struct tls_sni {
	char name[TLS_NAME_MAX];
	SSL_CTX *ctx;
};

struct tls {
	int refs;
	SSL_CTX *ctx;               /* default certificate */
	struct tls_sni *sni;
	size_t n_sni;
};

/* OpenSSL's reasons for the last failure, most specific first. */
static void ssl_reason(char *buf, size_t size)
{
	unsigned long e;
	size_t off = 0;
	unsigned n = 0;

	buf[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		char one[256];

		if (n++ >= 2 || off >= size)
			continue;
		ERR_error_string_n(e, one, sizeof one);
		off += (size_t)snprintf(buf + off, size - off, "%s%s", off ? "; " : "", one);
	}
	if (buf[0] == '\0')
		snprintf(buf, size, "unknown OpenSSL error");
}

static int set_fail(char *path_r, size_t pathlen, const char *path, char *err, size_t errlen,
		    const char *what)
{
	char reason[512];

	ssl_reason(reason, sizeof reason);
	if (path_r != NULL)
		snprintf(path_r, pathlen, "%s", path);
	snprintf(err, errlen, "%s (%s)", what, reason);
	return -1;
}

static int add_chain(SSL_CTX *ctx, const char *chain, char *path_r, size_t pathlen,
		     char *err, size_t errlen)
{
	FILE *f = fopen(chain, "r");
	X509 *x;
	int n = 0;

	if (f == NULL) {
		if (path_r != NULL)
			snprintf(path_r, pathlen, "%s", chain);
		snprintf(err, errlen, "cannot read the chain file (%s)", strerror(errno));
		return -1;
	}
	while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
		n++;
		if (!SSL_CTX_add0_chain_cert(ctx, x)) {
			X509_free(x);
			fclose(f);
			return set_fail(path_r, pathlen, chain, err, errlen, "cannot use the chain");
		}
	}
	fclose(f);
	if (n == 0)
		return set_fail(path_r, pathlen, chain, err, errlen, "no certificate in the chain file");
	ERR_clear_error();   /* the PEM reader's end-of-file "error" */
	return 0;
}

static SSL_CTX *ctx_new(const struct carrier_conf *conf, const char *cert, const char *key,
			const char *chain, char *path_r, size_t pathlen, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	int minv = strcasecmp(conf->tls_min_version, "TLSv1.3") == 0 ? TLS1_3_VERSION :
		   TLS1_2_VERSION;
	char mismatch[1200];

	ERR_clear_error();
	if (ctx == NULL) {
		set_fail(path_r, pathlen, cert, err, errlen, "cannot create a TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, minv);
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION |
			    SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (conf->tls_ciphers[0] && !SSL_CTX_set_cipher_list(ctx, conf->tls_ciphers)) {
		set_fail(path_r, pathlen, conf->path, err, errlen, "tls.ciphers matches no cipher");
		goto fail;
	}
	if (conf->tls_ciphersuites[0] && !SSL_CTX_set_ciphersuites(ctx, conf->tls_ciphersuites)) {
		set_fail(path_r, pathlen, conf->path, err, errlen, "tls.ciphersuites matches no suite");
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		set_fail(path_r, pathlen, cert, err, errlen, "cannot use the certificate");
		goto fail;
	}
	if (chain != NULL && chain[0] && add_chain(ctx, chain, path_r, pathlen, err, errlen) < 0)
		goto fail;
	snprintf(mismatch, sizeof mismatch, "the key does not match the certificate %s", cert);
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		bool bad_pair = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;

		set_fail(path_r, pathlen, key, err, errlen,
			 bad_pair ? mismatch : "cannot use the private key");
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		set_fail(path_r, pathlen, key, err, errlen, mismatch);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static bool name_matches(const char *pattern, const char *name)
{
	const char *dot;

	if (strcasecmp(pattern, name) == 0)
		return true;
	if (pattern[0] != '*' || pattern[1] != '.' || (dot = strchr(name, '.')) == NULL)
		return false;
	return dot != name && strcasecmp(pattern + 1, dot) == 0;
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
	struct tls *t = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

	if (name == NULL)
		return SSL_TLSEXT_ERR_NOACK;
	for (size_t i = 0; i < t->n_sni; i++)
		if (name_matches(t->sni[i].name, name)) {
			SSL_set_SSL_CTX(ssl, t->sni[i].ctx);
			return SSL_TLSEXT_ERR_OK;
		}
	return SSL_TLSEXT_ERR_OK;   /* the default certificate */
}

/* One "NAME:CERT:KEY" item of tls.sni (conf validated the shape). */
static int sni_add(struct tls *t, const struct carrier_conf *conf, const char *item,
		   char *path_r, size_t pathlen, char *err, size_t errlen)
{
	char buf[3 * 1024], *cert, *key;
	struct tls_sni *e;

	snprintf(buf, sizeof buf, "%s", item);
	cert = strchr(buf, ':');
	key = cert ? strchr(cert + 1, ':') : NULL;
	if (key == NULL || t->n_sni >= TLS_SNI_MAX) {
		snprintf(err, errlen, "tls.sni: bad item '%s'", item);
		return -1;
	}
	*cert++ = '\0';
	*key++ = '\0';
	e = &t->sni[t->n_sni];
	snprintf(e->name, sizeof e->name, "%s", buf);
	e->ctx = ctx_new(conf, cert, key, NULL, path_r, pathlen, err, errlen);
	if (e->ctx == NULL)
		return -1;
	t->n_sni++;
	return 0;
}

static int sni_load(struct tls *t, const struct carrier_conf *conf, char *path_r,
		    size_t pathlen, char *err, size_t errlen)
{
	const char *p = conf->tls_sni;

	t->sni = calloc(TLS_SNI_MAX, sizeof *t->sni);
	if (t->sni == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	while (*p) {
		char item[3 * 1024];
		size_t n = strcspn(p, ","), a = 0;

		while (a < n && (p[a] == ' ' || p[a] == '\t'))
			a++;
		while (n > a && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n > a) {
			snprintf(item, sizeof item, "%.*s", (int)(n - a), p + a);
			if (sni_add(t, conf, item, path_r, pathlen, err, errlen) < 0)
				return -1;
		}
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	return 0;
}

struct tls *tls_new(const struct carrier_conf *conf, char *path_r, size_t pathlen,
		    char *err, size_t errlen)
{
	struct tls *t;

	err[0] = '\0';
	if (path_r != NULL && pathlen)
		path_r[0] = '\0';
	if (conf->tls_cert[0] == '\0')
		return NULL;
	t = calloc(1, sizeof *t);
	if (t == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->refs = 1;
	t->ctx = ctx_new(conf, conf->tls_cert, conf->tls_key, conf->tls_chain, path_r, pathlen,
			 err, errlen);
	if (t->ctx == NULL || sni_load(t, conf, path_r, pathlen, err, errlen) < 0) {
		tls_unref(&t);
		return NULL;
	}
	SSL_CTX_set_tlsext_servername_callback(t->ctx, sni_cb);
	SSL_CTX_set_tlsext_servername_arg(t->ctx, t);
	return t;
}

struct tls *tls_ref(struct tls *t)
{
	if (t != NULL)
		t->refs++;
	return t;
}

void tls_unref(struct tls **tp)
{
	struct tls *t = *tp;

	*tp = NULL;
	if (t == NULL || --t->refs > 0)
		return;
	for (size_t i = 0; i < t->n_sni; i++)
		SSL_CTX_free(t->sni[i].ctx);
	free(t->sni);
	SSL_CTX_free(t->ctx);
	free(t);
}

size_t tls_sni_count(const struct tls *t)
{
	return t != NULL ? t->n_sni : 0;
}

SSL *tls_ssl_new(struct tls *t)
{
	return t != NULL ? SSL_new(t->ctx) : NULL;
}

void tls_describe(SSL *ssl, char *version, size_t vlen, char *cipher, size_t clen)
{
	const char *c = ssl ? SSL_get_cipher_name(ssl) : NULL;

	snprintf(version, vlen, "%s", ssl ? SSL_get_version(ssl) : "none");
	snprintf(cipher, clen, "%s", c ? c : "none");
}

/* ---- client side -------------------------------------------------------------- */

#define TLS_CLIENT_CA_MAX 16

struct tls_client_ca {
	char *path;
	SSL_CTX *ctx;
};

struct tls_client {
	SSL_CTX *ctx;                       /* system trust store */
	struct tls_client_ca ca[TLS_CLIENT_CA_MAX];
	size_t n_ca;
};

static SSL_CTX *client_ctx(const char *ca_file, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char reason[512];

	ERR_clear_error();
	if (ctx == NULL) {
		ssl_reason(reason, sizeof reason);
		snprintf(err, errlen, "cannot create a TLS context (%s)", reason);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if ((ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) :
	     SSL_CTX_set_default_verify_paths(ctx)) != 1) {
		ssl_reason(reason, sizeof reason);
		snprintf(err, errlen, "%s: cannot load the CA certificates (%s)",
			 ca_file ? ca_file : "system trust store", reason);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

struct tls_client *tls_client_new(char *err, size_t errlen)
{
	struct tls_client *tc = calloc(1, sizeof *tc);

	if (tc == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	tc->ctx = client_ctx(NULL, err, errlen);
	if (tc->ctx == NULL) {
		free(tc);
		return NULL;
	}
	return tc;
}

void tls_client_free(struct tls_client **tcp)
{
	struct tls_client *tc = *tcp;

	*tcp = NULL;
	if (tc == NULL)
		return;
	for (size_t i = 0; i < tc->n_ca; i++) {
		free(tc->ca[i].path);
		SSL_CTX_free(tc->ca[i].ctx);
	}
	SSL_CTX_free(tc->ctx);
	free(tc);
}

static SSL_CTX *ctx_for(struct tls_client *tc, const char *ca_file, char *err, size_t errlen)
{
	struct tls_client_ca *e;

	if (ca_file == NULL || ca_file[0] == '\0')
		return tc->ctx;
	for (size_t i = 0; i < tc->n_ca; i++)
		if (strcmp(tc->ca[i].path, ca_file) == 0)
			return tc->ca[i].ctx;
	if (tc->n_ca == TLS_CLIENT_CA_MAX) {
		snprintf(err, errlen, "%s: too many distinct CA files (at most %d)", ca_file,
			 TLS_CLIENT_CA_MAX);
		return NULL;
	}
	e = &tc->ca[tc->n_ca];
	if ((e->path = strdup(ca_file)) == NULL || (e->ctx = client_ctx(ca_file, err, errlen)) == NULL) {
		if (e->path == NULL)
			snprintf(err, errlen, "out of memory");
		free(e->path);
		e->path = NULL;
		return NULL;
	}
	tc->n_ca++;
	return e->ctx;
}

static bool is_ip_literal(const char *s)
{
	return strspn(s, "0123456789.") == strlen(s) || strchr(s, ':') != NULL;
}

SSL *tls_client_ssl(struct tls_client *tc, const char *ca_file, const char *sni,
		    const char *verify_name, char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_for(tc, verify_name ? ca_file : NULL, err, errlen);
	SSL *ssl;

	if (ctx == NULL)
		return NULL;
	ssl = SSL_new(ctx);
	if (ssl == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (sni != NULL && sni[0] && !is_ip_literal(sni))
		SSL_set_tlsext_host_name(ssl, sni);
	if (verify_name != NULL && (verify_name[0] == '\0' || SSL_set1_host(ssl, verify_name) != 1)) {
		snprintf(err, errlen, "no name to verify the certificate against");
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

bool tls_client_check(SSL *ssl, char *reason, size_t size)
{
	long v = SSL_get_verify_result(ssl);
	X509 *peer = SSL_get0_peer_certificate(ssl);

	if (peer == NULL) {
		snprintf(reason, size, "certificate verify failed: no certificate from the peer");
		return false;
	}
	if (v != X509_V_OK) {
		snprintf(reason, size, "certificate verify failed: %s",
			 X509_verify_cert_error_string(v));
		return false;
	}
	return true;
}
