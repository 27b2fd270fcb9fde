/*
 * tls: the server side's TLS contexts (OpenSSL 3).
 *
 * Owns: one SSL_CTX per configured certificate ([tls] cert/key/chain, and
 * one per `sni` entry), the protocol floor and cipher policy, and the SNI
 * callback choosing a context by the client's server name.  A struct tls is
 * reference counted: the server holds one reference, each session that
 * made an SSL object from it holds another until it ends, so a reload
 * (a new struct tls swapped in) never pulls a context from under a
 * handshake in progress.
 *
 * Must not: touch sockets (smtp_session wraps the SSL in a bufferevent),
 * log (errors come back as text naming the path and OpenSSL's reason).
 *
 * Threads: a struct tls is built on any thread; references are taken and
 * dropped on the loop thread that owns the server.
 */
#ifndef CARRIER_TLS_H
#define CARRIER_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"

struct tls;
typedef struct ssl_st SSL;

/*
 * Builds the contexts from conf's [tls] section.  Returns NULL with *err
 * empty when no certificate is configured (TLS off), NULL with a reason in
 * err ("the key does not match the certificate /etc/carrier/cert.pem
 * (error:05800074:x509 certificate routines::key values mismatch)") and
 * the failing file in `path_r` when a file cannot be used, else a struct
 * tls with one reference.
 */
struct tls *tls_new(const struct carrier_conf *conf, char *path_r, size_t pathlen,
		    char *err, size_t errlen);

/* Adds a reference; returns `t`.  NULL is allowed and returned. */
struct tls *tls_ref(struct tls *t);

/* Drops a reference and clears the caller's pointer; the last one frees. */
void tls_unref(struct tls **tp);

/* Certificates chosen by SNI besides the default. */
size_t tls_sni_count(const struct tls *t);

/* A new server-side SSL object (the SNI callback wired), or NULL. */
SSL *tls_ssl_new(struct tls *t);

/* Writes "TLSv1.3 TLS_AES_256_GCM_SHA384" for a finished handshake. */
void tls_describe(SSL *ssl, char *version, size_t vlen, char *cipher, size_t clen);

/* ---- client side (outbound STARTTLS) ---------------------------------------- */

struct tls_client;

/* Client contexts: TLS 1.2+, the system trust store, and one context per
 * CA file asked for (at most 16).  NULL with a reason on failure. */
struct tls_client *tls_client_new(char *err, size_t errlen);
void tls_client_free(struct tls_client **tcp);

/*
 * A client SSL for one connection: SNI `sni` (NULL or an IP literal: none),
 * and, when `verify_name` is not NULL, the chain checked against `ca_file`
 * (NULL: the system store) and the name against `verify_name`.  The
 * handshake does not stop on a bad certificate: tls_client_check() tells
 * after it.  NULL with a reason on failure.
 */
SSL *tls_client_ssl(struct tls_client *tc, const char *ca_file, const char *sni,
		    const char *verify_name, char *err, size_t errlen);

/* After the handshake: true when the chain and name verified, else false
 * with OpenSSL's reason ("certificate verify failed: Hostname mismatch"). */
bool tls_client_check(SSL *ssl, char *reason, size_t size);

#endif
