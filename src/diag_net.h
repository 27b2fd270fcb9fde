/*
 * diag_net: who holds a TCP port, read from /proc.
 *
 * Pure parsers of /proc/net/tcp and /proc/net/tcp6 text (unit-tested on
 * samples) and the scan of /proc/[pid]/fd for the socket's inode.  Part of
 * the diag module; no events, no state.  Any thread.
 */
#ifndef CARRIER_DIAG_NET_H
#define CARRIER_DIAG_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define DIAG_TCP_LISTEN 0x0A            /* st column of a listening socket */

/* One row of /proc/net/tcp or /proc/net/tcp6. */
struct diag_tcp_entry {
	int family;                     /* AF_INET or AF_INET6 */
	uint8_t addr[16];               /* network order; first 4 bytes for v4 */
	uint16_t port;                  /* host order */
	unsigned state;                 /* DIAG_TCP_LISTEN, ... */
	unsigned uid;
	unsigned long inode;
};

/* Parses one row (not the header).  `family` says which file it came from.
 * Returns 0, or -1 when the line is a header or malformed. */
int diag_tcp_parse_line(const char *line, int family, struct diag_tcp_entry *e_r);

/*
 * Finds in `text` (the whole content of /proc/net/tcp or tcp6, `family`
 * telling which) the listening socket that makes binding `want` fail: same
 * port, and the same address, or either side a wildcard, or an IPv4
 * address against its v4-mapped IPv6 form.  Returns 0 and the row in *e_r,
 * or -1 when none.
 */
int diag_tcp_find_listener(const char *text, int family,
			   const struct sockaddr *want, struct diag_tcp_entry *e_r);

/* Who holds a port: the socket found in /proc/net and its process. */
struct diag_holder {
	unsigned long inode;            /* 0 when no listening socket is visible */
	unsigned uid;                   /* owner of the socket, from /proc/net */
	pid_t pid;                      /* 0 when no visible process has it open */
	char comm[64];                  /* /proc/pid/comm, "" when unknown */
	unsigned n_pids;                /* processes sharing the socket */
};

/*
 * Looks for the holder of the TCP listener `want` (AF_INET/AF_INET6) under
 * `proc` ("/proc" normally): its socket in net/tcp and net/tcp6, then the
 * process whose fd points at "socket:[inode]" (lowest pid when several).
 * Returns 1 when a process is named, 0 when the socket is seen but no
 * visible process holds it (other user's /proc hidden, another namespace),
 * -1 when no listening socket is visible.
 */
int diag_port_holder(const char *proc, const struct sockaddr *want,
		     struct diag_holder *h_r);

/* Lowest pid with an fd on "socket:[inode]" under `proc`; 0 when none.
 * *n_r (may be NULL) gets the number of such processes. */
pid_t diag_inode_pid(const char *proc, unsigned long inode, unsigned *n_r);

/* Reads /proc/pid/comm into buf (no newline); "" when unreadable. */
void diag_pid_comm(const char *proc, pid_t pid, char *buf, size_t size);

/* Inode of the Unix socket bound at `path`, from /proc/net/unix text;
 * 0 when not found. */
unsigned long diag_unix_find_inode(const char *text, const char *path);

#define DIAG_IFA_F_DADFAILED 0x08        /* IFA_F_* of <linux/if_addr.h> */
#define DIAG_IFA_F_TENTATIVE 0x40

/* Finds the 16-byte IPv6 address `addr` in /proc/net/if_inet6 text.
 * Returns 0 with its IFA_F_* flags and interface name, or -1. */
int diag_inet6_find(const char *text, const uint8_t addr[16], unsigned *flags_r,
		    char *ifname, size_t ifsize);

/* Reads a whole (small, /proc) file into a new NUL-terminated buffer the
 * caller frees; NULL with errno set on failure. */
char *diag_read_file(const char *path, size_t *len_r);

#endif
