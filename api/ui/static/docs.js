// Swagger UI over this server's OpenAPI document, from the vendored bundle (no CDN, no inline script: the CSP allows
// only this origin's files).
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
