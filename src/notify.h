/* notify.h - readiness for the service manager: systemd's notify protocol (sd_notify(3)), a
 * datagram to $NOTIFY_SOCKET. Without that variable (not under systemd) it does nothing. */
#ifndef NUMATIX_NOTIFY_H
#define NUMATIX_NOTIFY_H

/* Sends state, e.g. "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...". */
void notify(const char *state);

#endif
