// New notifications as they happen: the API's event stream, opened with a
// stream ticket (an EventSource cannot send the Authorization header).
// A ticket opens one stream, once: when the connection drops, the stream
// is opened again with a new ticket and the id of the last notification
// received (last_event_id), so that what came meanwhile is sent first.

import {call} from "./api.js";

export class NotificationStream {
  /**
   * onNotification(notification) for each one; onState("connecting" |
   * "live" | "reconnecting" | "stopped") as the connection goes;
   * onCatchUp() once a stream opened with nothing to resume from is live:
   * what came between the caller's last look and the stream's start is
   * found only by looking again (the caller drops what it has seen).
   */
  constructor({onNotification, onState = () => {}, onCatchUp = async () => {}}) {
    this.onNotification = onNotification;
    this.onState = onState;
    this.onCatchUp = onCatchUp;
    this.source = null;
    this.timer = null;
    this.failures = 0;
    this.stopped = true;
    this.lastEventId = null;
  }

  /** Open the stream; after lastEventId when given (catch up from there). */
  start(lastEventId = null) {
    this.stop();
    this.stopped = false;
    this.lastEventId = lastEventId;
    this.onState("connecting");
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.source) this.source.close();
    this.source = null;
    this.onState("stopped");
  }

  async connect() {
    if (this.stopped) return;
    let ticket;
    try {
      ticket = (await call("POST", "/v1/notifications/stream/tickets")).ticket;
    } catch (error) {
      if (error.status === 401) {
        this.stop(); // the session is over: nothing to stream
      } else {
        this.retryLater();
      }
      return;
    }
    if (this.stopped) return;
    const query = new URLSearchParams({ticket});
    if (this.lastEventId) query.set("last_event_id", this.lastEventId);
    const resumed = Boolean(this.lastEventId);
    const source = new EventSource(`/v1/notifications/stream?${query}`);
    this.source = source;
    source.addEventListener("open", () => {
      this.failures = 0;
      this.onState("live");
      if (!resumed) this.onCatchUp().catch(() => {});
    });
    source.addEventListener("notification", (event) => {
      if (event.lastEventId) this.lastEventId = event.lastEventId;
      let notification;
      try {
        notification = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onNotification(notification);
    });
    source.addEventListener("error", () => {
      // The browser would reconnect with the same, used, ticket: instead,
      // close it and open a new stream with a new ticket.
      source.close();
      if (this.source !== source) return;
      this.source = null;
      this.retryLater();
    });
  }

  retryLater() {
    if (this.stopped) return;
    this.onState("reconnecting");
    const delay = Math.min(30000, 500 * 2 ** this.failures);
    this.failures += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
