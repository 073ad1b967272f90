// The prediction and training ids a caller may send through the proxy (deploy/nginx/nginx.conf).
//
// Cog's runtime (coglet 0.23.1) makes /tmp/coglet/predictions/<id>/ from the id the caller sends,
// before any of the model's code runs: an id that is a path makes folders wherever the server's
// user may write, and one it cannot make a folder for (over 255 bytes, a NUL, a path through a
// file) takes a slot for good. Only [A-Za-z0-9_-]{1,64} passes, or no id (the runtime makes one).

var SAFE_ID = /^[A-Za-z0-9_-]{1,64}$/;

function refuse(r, id) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(400, JSON.stringify({
        detail: 'id ' + JSON.stringify(String(id)).slice(0, 80) + ' is not allowed: use 1 to 64 of A-Z a-z 0-9 _ -, or leave it out',
    }) + '\n');
}

// The id in a JSON body (POST /predictions, POST /trainings, PUT /predictions/<id>): checked, then
// the request goes on to the server unchanged. A body that is not JSON goes on too: the runtime
// answers it as it answers any caller.
function check(r) {
    var text = r.requestText;
    if (text) {
        var body = null;
        try {
            body = JSON.parse(text);
        } catch (e) {
            body = null;
        }
        if (body !== null && typeof body === 'object' && body.id !== undefined && body.id !== null) {
            if (typeof body.id !== 'string' || !SAFE_ID.test(body.id)) {
                refuse(r, body.id);
                return;
            }
        }
    }
    r.internalRedirect('@cog');
}

export default {check};
